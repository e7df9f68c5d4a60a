"""Parity with the real timm library: random weights, fp32, logits within 1e-4."""

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from tests.conftest import perturb_
from vitlab.weights.timm import timm_twin

timm = pytest.importorskip("timm")


def _timm(name, **kw):
    return perturb_(timm.create_model(name, pretrained=False, **kw)).eval()


def _check(ours, theirs, x):
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("name", "kw", "suffix"),
    [
        ("vit_tiny_patch16_224", {}, ".safetensors"),
        ("vit_small_patch32_224", {}, ".pth"),
        ("vit_base_patch16_384", {"depth": 2}, ".bin"),
    ],
)
def test_logits_match_timm(tmp_path, name, kw, suffix):
    ref = _timm(name, **kw)
    path = tmp_path / f"w{suffix}"
    sd = ref.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    size = ref.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, size, size)
    ours = vitlab.load_checkpoint(path, model=name, source="timm", **kw)
    _check(ours, ref, x)
    auto = vitlab.load_checkpoint(path)  # architecture read from the tensors
    assert auto.cfg.extra["source"] == "timm"
    assert auto.cfg.img_size == size and auto.cfg.depth == ours.cfg.depth
    _check(auto, ref, x)


def test_dynamic_size_matches_timm(tmp_path):
    ref = _timm("vit_tiny_patch16_224", dynamic_img_size=True)
    path = tmp_path / "w.safetensors"
    save_file(ref.state_dict(), str(path))
    ours = vitlab.load_checkpoint(path, dynamic_img_size=True)
    for h, w in [(160, 192), (288, 256)]:  # smaller (antialiased) and larger than 224
        _check(ours, ref, torch.randn(2, 3, h, w))


@pytest.mark.parametrize(
    "kw",
    [
        {"global_pool": "avg", "class_token": False},
        {"class_token": True, "no_embed_class": True},
        {"global_pool": "avg", "fc_norm": True},
    ],
)
def test_timm_layout_variants(tmp_path, kw):
    ref = _timm("vit_tiny_patch16_224", depth=2, img_size=64, **kw)
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    ours = vitlab.load_checkpoint(path)
    _check(ours, ref, torch.randn(2, 3, 64, 64))


def test_set_image_size_matches_timm_resample():
    from timm.layers import resample_abs_pos_embed

    ours = perturb_(vitlab.create_model("vit_ti16", depth=1))
    before = ours.pos_embed.detach().clone()
    ours.set_image_size(384)
    ref = resample_abs_pos_embed(before, new_size=(24, 24), num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed.detach(), ref)


def test_export_to_timm_loads_in_timm(tmp_path):
    ours = perturb_(vitlab.create_model("vit_ti16", depth=2, num_classes=7)).eval()
    path = vitlab.save_checkpoint(ours, tmp_path / "t.safetensors", format="timm")
    ref = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=7)
    timm.models.load_checkpoint(ref, str(path), strict=True)  # timm's own reader
    _check(ours, ref.eval(), torch.randn(2, 3, 224, 224))


def test_timm_twin_has_the_same_outputs():
    pytest.importorskip("timm")
    for kw in [{}, {"pool": "gap", "fc_norm": True}, {"act": "gelu_tanh", "qkv_bias": False}]:
        ours = perturb_(vitlab.create_model("vit_test", **kw)).eval()
        twin = timm_twin(ours).eval()
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            assert (ours(x) - twin(x)).abs().max().item() <= 1e-5


def test_google_numerics_exported_to_timm_follow_the_warning(tmp_path, caplog):
    """A hybrid with vit_jax's numerics (tanh GELU, eps 1e-6, StdConv dividing by std + 1e-5,
    GroupNorm eps 1e-6) exported to timm: timm's model, built as the warning says, gives the
    same logits to fp32 rounding; vitlab reads the file back to the same logits too."""
    from functools import partial

    from tests.models.test_resnet import timm_hybrid
    from vitlab.models.config import replace

    stem = replace(vitlab.get_config("r50_vit_b16").backbone, layers=(1, 1, 1), weight_std="std",
                   std_conv_eps=1e-5, gn_eps=1e-6)  # fmt: skip
    ours = vitlab.create_model("r50_vit_b16", img_size=64, num_classes=5, backbone=stem,
                               act="gelu_tanh", layer_norm_eps=1e-6, embed_dim=64, depth=2,
                               num_heads=4, mlp_dim=128)  # fmt: skip
    ours = perturb_(ours).eval()
    with caplog.at_level("WARNING", logger="vitlab"):
        path = vitlab.save_checkpoint(ours, tmp_path / "t.safetensors", format="timm")
    said = caplog.text
    assert "act_layer='gelu_tanh'" in said and "partial(nn.LayerNorm, eps=1e-06)" in said
    assert "m.eps = 1e-06" in said and "fp32 rounding" in said
    advised = {"act_layer": "gelu_tanh", "norm_layer": partial(torch.nn.LayerNorm, eps=1e-6)}
    ref = timm_hybrid((1, 1, 1), 64, num_classes=5, embed_dim=64, depth=2, num_heads=4, **advised)
    for m in ref.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.eps = 1e-6
    timm.models.load_checkpoint(ref, str(path), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ours(x)
        torch.testing.assert_close(ref.eval()(x), want, rtol=0, atol=1e-5)
        torch.testing.assert_close(vitlab.load_checkpoint(path)(x), want, rtol=0, atol=1e-5)
