"""`vitlab finetune` on a small folder: the paper's recipe fits the data and reports."""

import pytest

import vitlab
from tests.cli.test_train import _photos, _warnings
from vitlab.cli.main import main
from vitlab.train.config import load_config


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level("INFO", logger="vitlab")  # the CLI's own level (-q: WARNING)


def test_finetune_on_a_small_folder_works_with_the_papers_recipe(tmp_path, capsys, caplog):
    """batch 512 (16 accumulated micro-batches) against 12 photos: the batch becomes the 12,
    the run says so, and without a validation split it still ends with a summary and the
    checkpoint's path."""
    ckpt = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "m.safetensors")
    photos = _photos(tmp_path / "photos")
    argv = ["finetune", "--from", str(ckpt), "--data", f"imagefolder:{photos}",
            "--img-size", "32", "--steps", "2", "--out", str(tmp_path / "ft"),
            "--set", "precision=fp32"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert any("batch_size 512 is more than the 12 training images" in w for w in _warnings(caplog))
    assert "no validation or test images" in out and "checkpoint:" in out
    assert str(tmp_path / "ft" / "last.safetensors") in out
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("epoch 1: train loss") for m in logged)  # epoch lines without val
    saved = load_config(tmp_path / "ft" / "config.yaml")
    assert (saved.batch_size, saved.accum_steps) == (12, 1)


def test_a_smaller_batch_keeps_the_presets_micro_batches(tmp_path, caplog):
    """`--batch-size 8` with finetune_paper's accum_steps 16 used to stop with "batch_size must
    divide by accum_steps", not saying where 16 came from."""
    ckpt = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "m.safetensors")
    argv = ["finetune", "--from", str(ckpt), "--data", "synthetic", "--img-size", "32",
            "--batch-size", "8", "--steps", "1", "--out", str(tmp_path / "ft"),
            "--set", "precision=fp32"]  # fmt: skip
    assert main(argv) == 0
    assert any("accum_steps 16" in r.getMessage() for r in caplog.records)


def test_an_onnx_file_cannot_be_fine_tuned(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"a graph")  # refused by its name, before it is read
    args = ["finetune", "--from", str(tmp_path / "m.onnx"), "--data", "digits", "--out",
            str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "ONNX graph, which cannot be trained" in err
    assert err.startswith(f"vitlab finetune: error: --from {tmp_path / 'm.onnx'} is an ONNX")
    assert err.count("m.onnx") == 1 and "--set" not in err  # it came from --from
