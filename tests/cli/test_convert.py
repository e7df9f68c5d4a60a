"""`vitlab convert`: the written files load in the target ecosystem's library with the same
logits, the summary says what was read and written, and mistakes are one-line errors."""

import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.cli.main import main


def test_convert_timm_to_hf_and_google(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    model = perturb_(vitlab.create_model("vit_test", num_classes=3)).eval()
    src = vitlab.save_checkpoint(model, tmp_path / "w.safetensors", format="timm")
    rc = main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf", "--set", "num_heads=2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "timm layout" in out and "2 layers" in out and "hf layout" in out
    ref = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ref(pixel_values=x).logits - model(x)).abs().max() <= 1e-4
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "g.npz"), "--to", "google"]) == 0
    back = vitlab.load_checkpoint(tmp_path / "g.npz")
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max() <= 1e-4


def test_convert_resizes(tmp_path, capsys):
    model = vitlab.create_model("vit_test")
    src = vitlab.save_checkpoint(model, tmp_path / "w.safetensors")
    dst = tmp_path / "big.safetensors"
    assert main(["convert", str(src), str(dst), "--to", "vitlab", "--set", "img_size=64"]) == 0
    assert vitlab.load_checkpoint(dst).pos_embed.shape[1] == 1 + 8 * 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "num_heads"], "key=value"),
        (["--set", "depthh=3"], "unknown ViTConfig field"),
        (["--resample", "lanczos"], "resampling"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
    src = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "w.safetensors")
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(dst), "--to", "vitlab", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not dst.exists()


def test_refused_target_writes_nothing(tmp_path, capsys):
    src = vitlab.save_checkpoint(
        vitlab.create_model("vit_test", act="gelu_tanh"), tmp_path / "w.safetensors"
    )
    assert main(["convert", str(src), str(tmp_path / "tv.pth"), "--to", "torchvision"]) == 2
    assert "exact GELU" in capsys.readouterr().err
    assert not (tmp_path / "tv.pth").exists()


def test_set_floats_in_any_notation_reach_the_model(tmp_path, capsys):
    """`convert ... --set layer_norm_eps=1e-5` used to store the string '1e-5' (convert had its
    own --set parser) and fail in the forward pass."""
    import torch

    src = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "m.safetensors")
    dst = tmp_path / "out.safetensors"
    argv = ["convert", str(src), str(dst), "--to", "vitlab", "--set", "layer_norm_eps=1e-5"]
    assert main(argv) == 0
    model = vitlab.load_checkpoint(dst)
    assert model.cfg.layer_norm_eps == 1e-5 and model.blocks[0].norm1.eps == 1e-5
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
