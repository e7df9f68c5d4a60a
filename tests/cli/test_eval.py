"""`vitlab eval` from the command line: a run's held-out images, reached again."""

import json

import pytest

from tests.cli.test_train import _photos
from vitlab.cli.main import main


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level("INFO", logger="vitlab")  # the CLI's own level (-q: WARNING)


def test_eval_reaches_the_validation_images_a_run_held_out(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", n=10)
    run = tmp_path / "run"
    argv = ["train", "--model", "vit_test", "--data", f"imagefolder:{photos}", "--img-size", "32",
            "--steps", "2", "--seed", "3", "--set", "val_split=0.2", "--out", str(run),
            "--set", "eval_every=1"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["split"] == "val" and report["n"] == 4
    # beside its run, the checkpoint's config.yaml says which images were held out (seed 3)
    ev = ["eval", "--checkpoint", str(run / "last.safetensors"), "--data", f"imagefolder:{photos}",
          "--split", "val"]  # fmt: skip
    assert main([*ev, "--out", str(tmp_path / "auto")]) == 0
    auto = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert auto["n"] == 4 and auto["top1"] == pytest.approx(report["top1"])
    assert auto["confusion"] == report["confusion"]
    # a copy without its run: no validation split; the hint says how to get the run's
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "m.safetensors").write_bytes((run / "last.safetensors").read_bytes())
    ev[2] = str(alone / "m.safetensors")
    capsys.readouterr()
    assert main(ev) == 2
    assert "--val-split and --seed" in capsys.readouterr().err
    assert main([*ev, "--val-split", "0.2", "--seed", "3", "--out", str(tmp_path / "e")]) == 0
    again = json.loads((tmp_path / "e" / "report.json").read_text())
    assert again["confusion"] == report["confusion"]
