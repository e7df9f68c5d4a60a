import json

import pytest
from PIL import Image

import vitlab
from vitlab.cli.main import main

TINY = ["--model", "vit_test", "--data", "synthetic", "--img-size", "16", "--batch-size", "32",
        "--set", "model_args.patch_size=4"]  # fmt: skip


def test_train_then_eval_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test top-1" in printed and str(out / "last.safetensors") in printed
    report = json.loads((out / "report.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (out / "summary.csv").read_text().startswith("epoch,step,lr,train_loss")
    assert vitlab.load_checkpoint(out / "last.safetensors").cfg.class_names[0] == "pattern 0"
    code = main(["eval", "--checkpoint", str(out / "last.safetensors"), "--data", "synthetic",
                 "--out", str(tmp_path / "eval")])  # fmt: skip
    assert code == 0
    again = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert again["top1"] == pytest.approx(report["top1"]) and again["n"] == report["n"]
    assert (tmp_path / "eval" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_finished_run_resumed_reports_without_training_again(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    stamp = (out / "last.state.pt").stat().st_mtime_ns
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out), "--resume"]) == 0
    assert (out / "last.state.pt").stat().st_mtime_ns == stamp
    assert "test top-1" in capsys.readouterr().out


def test_a_new_run_does_not_replace_a_finished_one_unless_told_to(tmp_path, capsys, monkeypatch):
    from vitlab.train import run
    from vitlab.train.state import RUN_FILES

    out = tmp_path / "run"
    argv = ["train", *TINY, "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    stamp = (out / "last.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a finished run" in err[0]
    assert "--resume" in err[0] and "--overwrite" in err[0]
    assert (out / "last.safetensors").stat().st_mtime_ns == stamp  # untouched

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(run, "load_data", stop)
    with pytest.raises(RuntimeError, match="stopped before training"):
        main([*argv, "--overwrite"])
    assert not [
        name for name in RUN_FILES.values() if (out / name).exists()
    ]  # nothing stale is left
    monkeypatch.undo()
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "report.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--set", "lrr=1"], "unknown config key(s): lrr (did you mean lr?)"),
        (["train", "--set", "batch_size=many"], "batch_size must be int, got 'many'"),
        (["train", "--config", "no_such_preset"], "no preset or YAML file named"),
        (["train", "--data", "imagefolder:/no/such/dir"], "/no/such/dir is not a folder"),
        (["train", "--data", "mnits"], "unknown dataset 'mnits'"),
        (["train", "--resume", "--overwrite"], "--overwrite starts one over: pass one"),
        (["eval", "--checkpoint", "/no/such.safetensors", "--data", "synthetic"], "does not exist"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_bad_images_are_skipped_and_counted_in_the_report(tmp_path, capsys):
    root = tmp_path / "imgs"
    for c, color in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (20, 20), color).save(root / c / f"{i}.png")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "b" / "empty.png").write_bytes(b"")
    argv = ["train", "--model", "vit_test", "--data", f"imagefolder:{root}", "--img-size", "16",
            "--batch-size", "7", "--epochs", "1", "--out", str(tmp_path / "run"),
            "--set", "model_args.patch_size=4", "--set", "val_split=0.25"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["split"] == "val"
    # 14 training images in 2 batches of 7 and 4 held out: each bad file is met exactly once
    assert report["skipped"] + report["skipped_eval"] == 2
    assert "skipped 2 unreadable image(s)" in capsys.readouterr().out


# ----------------------------------------------------------- what is assumed is said out loud
def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level("INFO", logger="vitlab")  # the CLI's own level (-q: WARNING)


def test_training_without_data_says_it_trains_on_synthetic(tmp_path, caplog):
    argv = ["train", "--model", "vit_test", "--steps", "1", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    assert any("no --data given: training on 'synthetic'" in w for w in _warnings(caplog))


def test_resume_with_nothing_to_resume_says_it_starts_anew(tmp_path, caplog):
    argv = ["train", *TINY, "--steps", "1", "--out", str(tmp_path / "new"), "--resume"]
    assert main(argv) == 0
    assert any("no run in" in w and "starting a new one" in w for w in _warnings(caplog))


def test_resume_path_takes_that_runs_own_config(tmp_path, capsys):
    """`--resume RUN_DIR` (the help's PATH form) used to fail with "config differs" unless the
    run's config.yaml was also given."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--set", "lr=3e-3", "--out", str(out)]) == 0
    stamp = (out / "last.state.pt").stat().st_mtime_ns
    assert main(["train", "--resume", str(out)]) == 0  # no --config, no flags
    assert (out / "last.state.pt").stat().st_mtime_ns == stamp  # finished: only reported
    assert "test top-1" in capsys.readouterr().out


def test_a_one_class_folder_is_refused(tmp_path, capsys):
    for i in range(4):
        (tmp_path / "only" / "cats").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / "only" / "cats" / f"{i}.png")
    argv = ["train", "--model", "vit_test", "--data", f"imagefolder:{tmp_path / 'only'}",
            "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 1 class (cats)" in err[0]


# --------------------------------------------------------------- the small-data fine-tune
def _photos(root, n=6):
    for c, color in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 48), tuple(v + 3 * i for v in color)).save(root / c / f"{i}.png")
    return root


def test_a_preset_that_is_not_yaml_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("lr: [1e-3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.yaml is not valid YAML (line 2, column 1: " in err


def test_model_args_may_set_what_the_data_suggests(tmp_path, capsys):
    """--set model_args.in_chans (or mean, std) over the data's own was a TypeError traceback
    (create_model got in_chans twice)."""
    args = ["train", "--model", "vit_test", "--data", "synthetic", "--steps", "1", "--batch-size",
            "8", "--out", str(tmp_path / "run"), "--set", "model_args.in_chans=1",
            "--set", "model_args.mean=[0.5]", "--set", "model_args.std=[0.5]"]  # fmt: skip
    assert main(args) == 0
    back = vitlab.load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert back.cfg.in_chans == 1 and back.cfg.mean == (0.5,)
