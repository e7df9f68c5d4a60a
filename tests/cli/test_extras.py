"""A missing optional package is one line naming the extra that installs it, from every command
that imports one (the same hint `vitlab.errors.require` writes everywhere), never a traceback."""

import sys

import pytest

from vitlab.cli.main import main


def one_line_hint(capsys, extra: str) -> str:
    out = capsys.readouterr()
    err = out.err.strip()
    assert "Traceback" not in out.err + out.out
    last = err.splitlines()[-1]
    assert f"pip install 'vitlab[{extra}]'" in last, err
    assert "error:" in last
    return last


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not read: the package check comes first")
    return path


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
@pytest.mark.parametrize("command", ["predict", "eval", "bench"])
def test_an_onnx_file_without_onnx_is_one_line(command, missing, onnx_file, standins, monkeypatch,
                                               capsys):  # fmt: skip
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    args = {
        "predict": ["predict", "--checkpoint", str(onnx_file), str(standins / "photo.png")],
        "eval": ["eval", "--checkpoint", str(onnx_file), "--data", "synthetic"],
        "bench": ["bench", "--checkpoint", str(onnx_file), "--iters", "1", "--warmup", "0"],
    }[command]
    assert main(args) == 2
    assert missing in one_line_hint(capsys, "onnx")


def test_digits_without_scikit_learn_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    args = ["train", "--data", "digits", "--steps", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert "sklearn" in one_line_hint(capsys, "digits")


def test_sample_photos_without_scikit_image_are_one_line(standins, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    args = ["inspect", "--checkpoint", str(standins / "m.safetensors"), "--out", str(tmp_path)]
    assert main(args) == 2
    assert "skimage" in one_line_hint(capsys, "inspect")


@pytest.mark.parametrize("command", ["predict", "eval", "convert"])
def test_openvino_without_openvino_is_one_line(command, standins, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    ir = tmp_path / "m.xml"
    ir.write_text("<net/>")
    args = {
        "predict": ["predict", "--checkpoint", str(ir), str(standins / "photo.png")],
        "eval": ["eval", "--checkpoint", str(ir), "--data", "synthetic"],
        "convert": [
            "convert",
            str(standins / "m.safetensors"),
            str(tmp_path / "o.xml"),
            "--to",
            "openvino",
        ],
    }[command]
    assert main(args) == 2
    assert "openvino" in one_line_hint(capsys, "openvino")
