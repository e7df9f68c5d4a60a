"""The published MAE encoder layouts load as starting points (issue #24): timm's
`vit_*_patch16_224.mae` state dicts give the features of timm's own model (random weights,
fp32, within 1e-4) and take a fresh head for fine-tuning."""

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from tests.conftest import perturb_

timm = pytest.importorskip("timm")

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)  # timm's names


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


# ----------------------------------------------------------------------------------- timm
def _timm_mae(tmp_path, suffix=".safetensors"):
    """timm's own `vit_base_patch16_224.mae` (headless: num_classes=0 in its pretrained cfg),
    at the tiny size, with random weights, saved as a plain state dict."""
    ref = perturb_(timm.create_model("vit_base_patch16_224.mae", pretrained=False, **TINY)).eval()
    assert ref.num_classes == 0 and ref.global_pool == "token"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / f"mae{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    return ref, path, sd


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_mae_features_match_timm(tmp_path, suffix):
    ref, path, _ = _timm_mae(tmp_path, suffix)
    ours = vitlab.load_checkpoint(path, num_heads=4)  # timm's files do not store head counts
    cfg = ours.cfg
    assert cfg.extra["source"] == "timm" and cfg.num_classes == 0
    assert (cfg.pool, cfg.class_token, cfg.fc_norm) == ("token", True, False)
    assert cfg.layer_norm_eps == 1e-6 and cfg.representation_size is None
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), ref.forward_features(x))
        _close(ours(x), ref(x))  # the pooled class token (no head)


def test_timm_mae_loads_with_a_fresh_head(tmp_path):
    """Fine-tuning's `load_checkpoint(path, num_classes=10)` of a headless file: every encoder
    tensor from the file, a new zero head (this was refused: "missing: head.weight")."""
    ref, path, sd = _timm_mae(tmp_path)
    ours = vitlab.load_checkpoint(path, num_heads=4, num_classes=10)
    own = ours.state_dict()
    assert set(own) == set(sd) | {"head.weight", "head.bias"}
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert own["head.weight"].shape == (10, 64) and not own["head.weight"].any()
    assert not own["head.bias"].any() and ours.cfg.num_classes == 10
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), ref.forward_features(x))
