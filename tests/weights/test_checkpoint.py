import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError


def _model(**kw):
    return perturb_(vitlab.create_model("vit_test", **kw)).eval()


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"pool": "gap", "pos_embed": "sincos", "in_chans": 1},
        {"representation_size": 16, "act": "gelu_tanh"},
    ],
)
def test_round_trip_is_bit_exact(tmp_path, kw):
    names = tuple(f"class {i}" for i in range(10))
    m = _model(class_names=names, **kw)
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    back = vitlab.load_checkpoint(path)
    assert back.cfg.class_names == names
    assert back.cfg.to_dict() | {"extra": {}} == m.cfg.to_dict() | {"extra": {}}
    sd, sd2 = m.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    x = torch.randn(2, m.cfg.in_chans, 32, 32)
    assert torch.equal(m(x), back(x))
    assert back.cfg.extra["source"] == "vitlab"


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    m = _model()
    vitlab.save_checkpoint(m, tmp_path / "a.safetensors")
    vitlab.save_checkpoint(m, tmp_path / "a.safetensors")  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_overrides_new_head_and_resolution(tmp_path):
    m = _model()
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    ft = vitlab.load_checkpoint(path, num_classes=3, img_size=64)
    assert ft.cfg.num_classes == 3 and ft.cfg.img_size == 64
    assert torch.count_nonzero(ft.head.weight) == 0  # zero-initialised new head
    assert ft.pos_embed.shape == (1, 65, 32)
    torch.testing.assert_close(ft.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight)


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


def test_unknown_layout_lists_what_was_expected(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="unknown weight layout.*timm") as e:
        vitlab.load_checkpoint(path)
    assert "foo.weight" in str(e.value)


def test_mismatch_lists_missing_unexpected_and_misshapen(tmp_path):
    m = _model()
    sd = m.state_dict()
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(5, 32)
    path = tmp_path / "t.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        vitlab.load_checkpoint(path, model="vit_test", source="timm")
    msg = str(e.value)
    assert "missing: norm.weight" in msg
    assert "unexpected: extra.weight" in msg
    assert "misshapen: blocks.0.mlp.fc1.weight (5, 32) vs model (64, 32)" in msg


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


def test_saved_files_get_the_usual_permissions(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")  # what any other program would create here
    path = vitlab.save_checkpoint(_model(), tmp_path / "m.safetensors")
    assert path.stat().st_mode == plain.stat().st_mode
