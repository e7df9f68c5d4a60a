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
            "--steps", "2", "--set", "val_split=0.2", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((run / "report.json").read_text())
    ev = ["eval", "--checkpoint", str(run / "last.safetensors"), "--data", f"imagefolder:{photos}",
          "--split", "val"]  # fmt: skip
    assert main(ev) == 2  # no val split of its own: the hint says how to get the run's
    assert "--val-split and --seed" in capsys.readouterr().err
    assert main([*ev, "--val-split", "0.2", "--out", str(tmp_path / "e")]) == 0
    again = json.loads((tmp_path / "e" / "report.json").read_text())
    assert again["n"] == report["n"] == 4 and again["top1"] == pytest.approx(report["top1"])
