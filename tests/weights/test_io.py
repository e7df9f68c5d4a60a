"""Reading weight files safely (vitlab.weights.io): no arbitrary unpickling, wrapped state dicts
unwrapped, files that are not checkpoints named as such."""

import pickle
import zipfile

import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError


def _model(**kw):
    return perturb_(vitlab.create_model("vit_test", **kw)).eval()


def test_not_a_checkpoint(tmp_path):
    txt = tmp_path / "notes.safetensors"
    txt.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        vitlab.load_checkpoint(txt)
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        vitlab.load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        vitlab.load_checkpoint(tmp_path / "missing.pth")
    other = tmp_path / "other.bin"
    other.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a"):
        vitlab.load_checkpoint(other)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_with_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Evil()}, path)
    with pytest.raises(CheckpointError, match="never unpickles"):
        vitlab.load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_wrapped_and_prefixed_state_dicts(tmp_path):
    m = _model()
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in m.state_dict().items()}, "epoch": 3}, path)
    back = vitlab.load_checkpoint(path, model="vit_test")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(back(x), m(x))


def test_zip_named_npz_that_is_not_npz(tmp_path):
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.pkl", pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        vitlab.load_checkpoint(path)
