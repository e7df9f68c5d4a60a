"""`vitlab soup` end to end: two tiny fine-tunes of one start (`vitlab finetune` records the
start's hash), souped, the soup evaluated like any checkpoint."""

import json

import pytest
import torch
from PIL import Image

import vitlab
from tests.conftest import perturb_
from vitlab.cli.main import main
from vitlab.weights.checkpoint import INIT_HASH, record_init, weights_sha256

NAMES = tuple(f"pattern {i}" for i in range(4))  # the synthetic set's classes


def _finetune(start, out, lr):
    argv = ["finetune", "--from", str(start), "--data", "synthetic", "--img-size", "16",
            "--steps", "2", "--batch-size", "32", "--out", str(out), "--set", "precision=fp32",
            "--set", "val_split=0.25", "--set", "warmup_steps=0", "--set", f"lr={lr}"]  # fmt: skip
    assert main(argv) == 0
    return out / "last.safetensors"


@pytest.fixture(scope="module")
def finetunes(tmp_path_factory):
    """A 'pre-trained' vit_test at 16 px and two 2-step fine-tunes of it (other learning rates,
    val_split 0.25 in their config.yaml)."""
    root = tmp_path_factory.mktemp("soup")
    torch.manual_seed(7)  # another start than any test's own models (seeded 0 per test)
    model = vitlab.create_model("vit_test", img_size=16, patch_size=4, num_classes=4,
                                class_names=NAMES)  # fmt: skip
    start = vitlab.save_checkpoint(perturb_(model), root / "start.safetensors")
    return start, [_finetune(start, root / f"lr{i}", lr) for i, lr in ((1, 0.03), (3, 0.1))]


def test_finetune_records_the_hash_of_its_start_and_two_finetunes_share_it(finetunes):
    start, runs = finetunes
    want = weights_sha256(vitlab.load_checkpoint(start))
    for path in runs:
        model = vitlab.load_checkpoint(path)
        assert model.cfg.extra[INIT_HASH] == want
        assert weights_sha256(model) != want  # it trained: the hash is the start's, not its own
    best = vitlab.load_checkpoint(runs[0].with_name("best.safetensors"))
    assert best.cfg.extra[INIT_HASH] == want


def test_a_run_from_scratch_records_no_start(tmp_path):
    argv = ["train", "--model", "vit_test", "--data", "synthetic", "--img-size", "16", "--steps",
            "1", "--batch-size", "32", "--set", "model_args.patch_size=4", "--out",
            str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    assert INIT_HASH not in vitlab.load_checkpoint(tmp_path / "run" / "last.safetensors").cfg.extra


def test_the_greedy_soup_from_the_command_line(finetunes, tmp_path, capsys):
    _, runs = finetunes
    out = tmp_path / "soup"
    argv = ["soup", *map(str, runs), "--greedy", "--data", "synthetic", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "soup:" in captured.err  # the progress bar
    printed = captured.out
    assert "uniform soup (2)" in printed and "greedy soup (" in printed
    assert f"wrote {out / 'soup.safetensors'}, {out / 'soup.json'}, {out / 'soup.png'}" in printed
    report = json.loads((out / "soup.json").read_text())
    assert (report["val_split"], report["seed"], report["val_images"]) == (0.25, 0, 64)
    assert [r["path"] for r in report["ingredients"]] == [str(p) for p in runs]
    assert all(0 <= r["val_top1"] <= 1 and 0 <= r["test_top1"] <= 1 for r in report["ingredients"])
    assert report["greedy"]["kept"] and set(report["greedy"]["kept"]) <= {str(p) for p in runs}
    assert report["uniform"]["test_top1"] is not None
    with Image.open(out / "soup.png") as png:
        assert png.format == "PNG" and png.width > 300
    soup = vitlab.load_checkpoint(out / "soup.safetensors")
    assert soup.cfg.class_names == NAMES and soup.cfg.img_size == 16
    code = main(["eval", "--checkpoint", str(out / "soup.safetensors"), "--data", "synthetic",
                 "--out", str(tmp_path / "eval")])  # fmt: skip
    assert code == 0 and "test top-1" in capsys.readouterr().out


def test_the_uniform_soup_from_the_command_line_evaluates_nothing(finetunes, tmp_path, capsys):
    _, runs = finetunes
    out = tmp_path / "soup"
    assert main(["soup", *map(str, runs), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["soup.safetensors"]
    assert "uniform soup of 2 checkpoints (not evaluated)" in capsys.readouterr().out


def _one_error_line(capsys, argv):
    """Exit 2 with one error line (after the lines that say which files were loaded)."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("vitlab soup: error: ") and lines[0] == err.splitlines()[-1]
    return lines[0]


def test_a_soup_of_different_starts_is_one_line(finetunes, tmp_path, capsys):
    _, runs = finetunes
    other = perturb_(vitlab.create_model("vit_test", img_size=16, patch_size=4, num_classes=4,
                                         class_names=NAMES))  # fmt: skip
    record_init(other)  # fine-tuned, as it says, from another start
    assert other.cfg.extra[INIT_HASH] != vitlab.load_checkpoint(runs[0]).cfg.extra[INIT_HASH]
    path = vitlab.save_checkpoint(other, tmp_path / "other.safetensors")
    err = _one_error_line(capsys, ["soup", str(runs[0]), str(path), "--out", str(tmp_path / "s")])
    assert "different starting weights" in err and "--allow-different-init" in err
    assert not (tmp_path / "s" / "soup.safetensors").exists()
    scratch = vitlab.save_checkpoint(other, tmp_path / "scratch.safetensors")  # hash kept...
    stripped = vitlab.load_checkpoint(scratch)
    stripped.cfg.extra.pop(INIT_HASH)  # ...and now not: a model trained from scratch
    vitlab.save_checkpoint(stripped, scratch)
    err = _one_error_line(capsys, ["soup", str(runs[0]), str(scratch), "--out", str(tmp_path)])
    assert "does not record the weights it was fine-tuned from" in err
    argv = ["soup", str(runs[0]), str(scratch), "--out", str(tmp_path / "s"),
            "--allow-different-init"]  # fmt: skip
    assert main(argv) == 0


def test_greedy_without_a_validation_split_says_how_to_get_one(tmp_path, capsys):
    model = perturb_(vitlab.create_model("vit_test", num_classes=4, class_names=NAMES))
    record_init(model)
    path = vitlab.save_checkpoint(model, tmp_path / "m.safetensors")  # no config.yaml beside it
    err = _one_error_line(capsys, ["soup", str(path), str(path), "--greedy", "--data",
                                   "synthetic", "--out", str(tmp_path / "s")])  # fmt: skip
    assert "synthetic has no val split" in err and "--val-split" in err
