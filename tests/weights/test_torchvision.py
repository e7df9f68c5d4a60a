"""Parity with torchvision's own VisionTransformer: random weights, fp32, logits within 1e-4."""

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer as TvViT

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError


def _tv(**kw):
    base = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    return perturb_(TvViT(**{**base, **kw})).eval()


def _close(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("kw", "suffix"),
    [({"num_classes": 10}, ".pth"), ({"num_classes": 7, "representation_size": 48}, ".bin")],
)
def test_torchvision_state_dict_loads_with_same_logits(tmp_path, kw, suffix):
    ref = _tv(**kw)
    path = tmp_path / f"tv{suffix}"
    torch.save(ref.state_dict(), path)
    ours = vitlab.load_checkpoint(path, num_heads=4)  # head counts are not in the tensors
    assert ours.cfg.extra["source"] == "torchvision"
    assert ours.cfg.representation_size == kw.get("representation_size")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(ours(x), ref(x))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_to_torchvision(tmp_path, suffix):
    ours = perturb_(vitlab.create_model("vit_test", num_classes=6)).eval()
    path = vitlab.save_checkpoint(ours, tmp_path / f"tv{suffix}", format="torchvision")
    ref = _tv(patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=6)
    if suffix == ".pth":
        sd = torch.load(path, weights_only=True)
    else:
        from safetensors.torch import load_file

        sd = load_file(path)
    ref.load_state_dict(sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(ours(x), ref(x))


def test_imagenet_head_gets_class_names(tmp_path):
    ref = _tv(num_classes=1000)
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    ours = vitlab.load_checkpoint(tmp_path / "tv.pth")
    from torchvision.models import ViT_B_16_Weights

    assert ours.cfg.class_names == tuple(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"])


def test_gelu_tanh_model_cannot_be_exported(tmp_path):
    model = vitlab.create_model("vit_test", act="gelu_tanh")
    with pytest.raises(CheckpointError, match="exact GELU"):
        vitlab.save_checkpoint(model, tmp_path / "tv.pth", format="torchvision")
