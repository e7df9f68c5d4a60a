"""Google .npz files: vitlab writes them, timm's own npz reader (`_load_weights`) loads them into
the matching timm model with the same logits (random weights, fp32, 1e-4), and vitlab reads
them back; big_vision layouts (top-level pos_embedding, stacked "scan" blocks) load too."""

import json
import logging

import numpy as np
import pytest
import torch

import vitlab
from tests.conftest import perturb_
from tests.models.test_resnet import timm_hybrid
from vitlab.errors import CheckpointError
from vitlab.models.config import replace
from vitlab.weights.google import CONFIG_KEY

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import _load_weights  # noqa: E402

SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_dim": 128}


def _close(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


def _logits(model, x):
    with torch.no_grad():
        return model(x)


def _timm_small_b16():
    """timm's ViT-B/16 cut to the size of `vit_b16` with SMALL, at 64 px and 10 classes."""
    return timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=64,
        num_classes=10,
        embed_dim=64,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
    ).eval()


def test_plain_vit_npz_round_trip_through_timm(tmp_path):
    ours = perturb_(vitlab.create_model("vit_b16", img_size=64, num_classes=10, **SMALL)).eval()
    path = vitlab.save_checkpoint(ours, tmp_path / "ViT-test.npz", format="google")
    ref = _timm_small_b16()
    _load_weights(ref, str(path))
    x = torch.randn(2, 3, 64, 64)
    _close(_logits(ours, x), _logits(ref, x))
    back = vitlab.load_checkpoint(path)  # exact config from the vitlab/config array
    assert back.cfg.extra["source"] == "google" and back.cfg.act == "gelu"
    _close(_logits(back, x), _logits(ours, x))


@pytest.mark.parametrize("layers", [(2, 1, 1), pytest.param((3, 4, 9), marks=pytest.mark.slow)])
def test_hybrid_npz_round_trip_through_timm(tmp_path, layers):
    stem = vitlab.get_config("r50_vit_b16").backbone
    ours = vitlab.create_model(
        "r50_vit_b16", img_size=64, num_classes=5, backbone=replace(stem, layers=layers), **SMALL
    )
    ours = perturb_(ours).eval()
    path = vitlab.save_checkpoint(ours, tmp_path / "R50+ViT-test.npz", format="google")
    ref = timm_hybrid(layers, 64, num_classes=5, embed_dim=64, depth=2, num_heads=4)
    _load_weights(ref, str(path))
    x = torch.randn(2, 3, 64, 64)
    _close(_logits(ours, x), _logits(ref, x))
    back = vitlab.load_checkpoint(path)
    _close(_logits(back, x), _logits(ours, x))


def _strip_config(path, out, transform=lambda d: d):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != CONFIG_KEY}
    np.savez(out, **transform(arrays))
    return out


def test_original_google_file_gets_google_numerics(tmp_path):
    """Without vitlab's config array the architecture comes from the arrays, and the numerics
    from Google's code: tanh-GELU, eps 1e-6, StdConv dividing by std + 1e-5."""
    ours = vitlab.create_model("r50_vit_b16", img_size=64, num_classes=1000, **SMALL)
    ours = perturb_(ours)
    path = vitlab.save_checkpoint(ours, tmp_path / "v.npz", format="google")
    orig = _strip_config(path, tmp_path / "orig.npz")
    model = vitlab.load_checkpoint(orig)
    c = model.cfg
    assert (c.embed_dim, c.depth, c.num_heads, c.mlp_dim, c.img_size) == (64, 2, 4, 128, 64)
    assert c.act == "gelu_tanh" and c.layer_norm_eps == 1e-6
    assert c.backbone.layers == (3, 4, 9) and c.backbone.weight_std == "std"
    assert c.backbone.std_conv_eps == 1e-5 and c.backbone.gn_eps == 1e-6
    from torchvision.models import ViT_B_16_Weights

    assert c.class_names == tuple(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"])


def _to_big_vision(arrays, scan=False):
    """Rename a vit_jax file as big_vision writes it (pos embedding for the patches only)."""
    out = {}
    for k, v in arrays.items():
        k = k.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
        k = k.replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0")
        if k == "Transformer/posembed_input/pos_embedding":
            k, v = "pos_embedding", v[:, 1:]
        out[f"params/{k}"] = v
    if scan:
        blocks = sorted({k.split("/")[2] for k in out if "encoderblock_" in k})
        for sub in {k.split("/", 3)[3] for k in out if "encoderblock_0/" in k}:
            stack = [out.pop(f"params/Transformer/{b}/{sub}") for b in blocks]
            out[f"params/Transformer/encoderblock/{sub}"] = np.stack(stack)
    return out


@pytest.mark.parametrize("scan", [False, True])
def test_big_vision_layouts_load(tmp_path, scan):
    ours = perturb_(
        vitlab.create_model("vit_b16", img_size=64, num_classes=3, pos_embed_cls=False, **SMALL)
    ).eval()
    path = vitlab.save_checkpoint(ours, tmp_path / "v.npz", format="google")
    vj = _strip_config(path, tmp_path / "vj.npz", lambda a: a)
    with np.load(vj) as f:
        arrays = {k: f[k] for k in f.files}
    bv = tmp_path / "bv.npz"
    np.savez(bv, **_to_big_vision(arrays, scan))
    model = vitlab.load_checkpoint(bv, act="gelu")
    assert not model.cfg.pos_embed_cls and model.cfg.depth == 2
    ref = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=64,
        num_classes=3,
        embed_dim=64,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        no_embed_class=True,
    ).eval()
    _load_weights(ref, str(bv))  # timm's reader of big_vision files agrees
    x = torch.randn(2, 3, 64, 64)
    _close(_logits(model, x), _logits(ref, x))


def _to_current_vit_jax(arrays):
    """Rename a published vit_jax file as current vit_jax writes it: flax.linen numbers each
    sub-module type on its own, and the position embedding stays inside the Transformer."""
    names = {
        "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
        "LayerNorm_2": "LayerNorm_1",
        "MlpBlock_3": "MlpBlock_0",
    }

    def rename(k):
        for old, new in names.items():
            k = k.replace(f"/{old}/", f"/{new}/")
        return k

    return {rename(k): v for k, v in arrays.items()}


@pytest.mark.parametrize("source", ["auto", "google"])
def test_current_vit_jax_names_load(tmp_path, source):
    ours = perturb_(vitlab.create_model("vit_b16", img_size=64, num_classes=10, **SMALL)).eval()
    path = vitlab.save_checkpoint(ours, tmp_path / "v.npz", format="google")
    ref = _timm_small_b16()
    _load_weights(ref, str(path))  # timm reads the published naming
    new = _strip_config(path, tmp_path / "new.npz", _to_current_vit_jax)
    with np.load(new) as f:
        assert "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel" in f.files
        assert "Transformer/posembed_input/pos_embedding" in f.files
    model = vitlab.load_checkpoint(new, source=source)  # Google's numerics
    c = model.cfg
    assert c.act == "gelu_tanh" and c.layer_norm_eps == 1e-6
    assert c.pos_embed == "learn" and c.pos_embed_cls and c.depth == 2
    exact = vitlab.load_checkpoint(new, source=source, act="gelu")
    x = torch.randn(2, 3, 64, 64)
    _close(_logits(exact, x), _logits(ref, x))
    _close(_logits(exact, x), _logits(ours, x))


def test_unknown_block_naming_is_named(tmp_path):
    model = vitlab.create_model("vit_test")
    path = vitlab.save_checkpoint(model, tmp_path / "v.npz", format="google")

    def rename(a):
        return {k.replace("MultiHeadDotProductAttention_1", "Attention_0"): v for k, v in a.items()}

    bad = _strip_config(path, tmp_path / "bad.npz", rename)
    with pytest.raises(CheckpointError, match="neither") as err:
        vitlab.load_checkpoint(bad)
    assert "MultiHeadDotProductAttention_0/query/kernel" in str(err.value)
    assert "MultiHeadDotProductAttention_1/query/kernel" in str(err.value)


def test_unknown_array_is_named(tmp_path):
    ours = vitlab.create_model("vit_test")
    path = vitlab.save_checkpoint(ours, tmp_path / "v.npz", format="google")

    def add(a):
        a["Transformer/encoderblock_0/LayerScale_0/gamma"] = np.ones(32, np.float32)
        return a

    bad = _strip_config(path, tmp_path / "bad.npz", add)
    with pytest.raises(CheckpointError, match="LayerScale_0"):
        vitlab.load_checkpoint(bad)


def test_config_array_is_plain_unicode(tmp_path):
    path = vitlab.save_checkpoint(
        vitlab.create_model("vit_test"), tmp_path / "v.npz", format="google"
    )
    with np.load(path, allow_pickle=False) as f:  # no pickle needed to read anything
        cfg = json.loads(str(f[CONFIG_KEY]))
    assert cfg["embed_dim"] == 32


@pytest.mark.parametrize("classes", [10, 0])
def test_bit_npz_round_trip_through_timm(tmp_path, classes):
    """A BiT ResNet written in big_transfer's layout loads in timm's own BiT npz reader."""
    from timm.models.resnetv2 import _load_weights as load_bit

    from tests.models.test_resnet import _timm_bit

    ours = vitlab.create_model("bit_r50x1", layers=(1, 2, 1, 1), num_classes=classes)
    ours = perturb_(ours).eval()
    path = vitlab.save_checkpoint(ours, tmp_path / "BiT-test.npz", format="google")
    ref = _timm_bit((1, 2, 1, 1), num_classes=classes)
    load_bit(ref, str(path))
    x = torch.randn(2, 3, 64, 64)
    _close(_logits(ours, x), _logits(ref, x))
    orig = _strip_config(path, tmp_path / "orig.npz")  # as big_transfer publishes it
    back = vitlab.load_checkpoint(orig)
    assert back.cfg.layers == (1, 2, 1, 1) and back.cfg.num_classes == classes
    _close(_logits(back, x), _logits(ours, x))


def _small_stem(**kw):
    return replace(vitlab.get_config("r50_vit_b16").backbone, layers=(1, 1, 1), **kw)


JAX_STEM = {"weight_std": "std", "std_conv_eps": 1e-5, "gn_eps": 1e-6}


@pytest.mark.parametrize(
    "name, kw, named",
    [
        ("vit_test", {}, ["act='gelu_tanh' (this model: 'gelu')"]),
        ("vit_test", {"act": "gelu_tanh", "layer_norm_eps": 1e-5}, ["layer_norm_eps=1e-06"]),
        ("vit_test", {"act": "gelu_tanh"}, []),
        (
            "r50_vit_b16",
            {"backbone": _small_stem(), **SMALL},
            [
                "act=",
                "backbone.weight_std='std' (this model: 'var')",
                "backbone.std_conv_eps=1e-05",
            ],
        ),
        ("r50_vit_b16", {"backbone": _small_stem(gn_eps=1e-5), **SMALL}, ["backbone.gn_eps=1e-06"]),
        ("r50_vit_b16", {"backbone": _small_stem(**JAX_STEM), "act": "gelu_tanh", **SMALL}, []),
        ("bit_r50x1", {"layers": (1, 1, 1, 1)}, []),  # timm's eps 1e-8 on the variance: accepted
        (
            "bit_r50x1",
            {"layers": (1, 1, 1, 1), "gn_eps": 1e-6},
            ["gn_eps=1e-05 (this model: 1e-06)"],
        ),
        ("bit_r50x1", {"layers": (1, 1, 1, 1), "weight_std": "std"}, ["weight_std='var'"]),
    ],
)
def test_google_export_warns_about_numerics_google_does_not_run(tmp_path, caplog, name, kw, named):
    """vit_jax runs tanh-GELU, eps 1e-6 and its StdConv/GroupNorm, big_transfer its own,
    whatever the file holds: the export names each field where the model differs."""
    model = vitlab.create_model(name, num_classes=3, **kw)
    with caplog.at_level(logging.WARNING, logger="vitlab"):
        vitlab.save_checkpoint(model, tmp_path / "m.npz", format="google")
    warnings = [r.getMessage() for r in caplog.records if "Google layout" in r.getMessage()]
    if not named:
        assert warnings == []
        return
    assert len(warnings) == 1
    for field in named:
        assert field in warnings[0]
