"""ResNetV2 (BiT) and the R50+ViT hybrid against timm's own implementations: random weights,
fp32, logits within 1e-4, weights moved with vitlab's timm adapter (the identity key map)."""

from functools import partial

import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.errors import ConfigError

timm = pytest.importorskip("timm")
from timm.layers import StdConv2d  # noqa: E402
from timm.models.resnetv2 import ResNetV2 as TimmResNetV2  # noqa: E402


def _close(a, b, tol=1e-4):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol


def _timm_bit(layers, width_factor=1, in_chans=3, num_classes=10):
    """timm's BiT ResNet-v2 as `resnetv2_50x1_bit` builds it, with fewer units."""
    ref = TimmResNetV2(
        layers=list(layers),
        width_factor=width_factor,
        in_chans=in_chans,
        num_classes=num_classes,
        stem_type="fixed",
        conv_layer=partial(StdConv2d, eps=1e-8),
    )
    return perturb_(ref).eval()


@pytest.mark.parametrize(
    ("layers", "wf", "in_chans", "size"),
    [((1, 1, 1, 1), 1, 3, 64), ((1, 2, 1, 1), 2, 1, 28), ((2, 1, 1), 1, 3, 65)],
)
def test_bit_matches_timm(tmp_path, layers, wf, in_chans, size):
    ref = _timm_bit(layers, wf, in_chans)
    path = tmp_path / "bit.pth"
    torch.save(ref.state_dict(), path)
    ours = vitlab.load_checkpoint(path)  # architecture read from the tensors
    assert ours.cfg.layers == tuple(layers) and ours.cfg.in_chans == in_chans
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        _close(ours(x), ref(x))


def test_bit_registry_config_builds_timm_structure():
    ours = vitlab.create_model("resnetv2_50x1_bit", device="meta")
    ref = timm.create_model("resnetv2_50x1_bit", pretrained=False, device="meta")
    assert ours.cfg == vitlab.get_config("bit_r50x1")
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes


@pytest.mark.parametrize(("name", "timm_name"), [("bit_r50x3", "resnetv2_50x3_bit")])
def test_wide_bit_structure(name, timm_name):
    ours = vitlab.create_model(name, device="meta")
    ref = timm.create_model(timm_name, pretrained=False, device="meta")
    assert ours.num_params() == sum(p.numel() for p in ref.parameters())


def test_small_inputs_and_gray_images():
    """The training baseline: 1-channel 28 px Fashion-MNIST images, 10 classes."""
    for stem in ("fixed", "small"):
        model = vitlab.create_model(
            "bit_r50x1",
            in_chans=1,
            num_classes=10,
            img_size=28,
            layers=(1, 1, 1, 1),
            stem_width=32,
            stem_type=stem,
        )
        logits = model(torch.randn(3, 1, 28, 28))
        assert logits.shape == (3, 10)
        logits.sum().backward()  # trainable: the zero head still receives gradients
        assert model.head.fc.weight.grad.abs().sum() > 0


def test_wrong_channel_count_is_a_clear_error():
    model = vitlab.create_model("bit_r50x1", layers=(1, 1, 1, 1), num_classes=10)
    with pytest.raises(ConfigError, match="channels"):
        model(torch.randn(1, 1, 32, 32))


def test_reset_classifier_zero_head():
    model = vitlab.create_model("bit_r50x1", layers=(1, 1, 1, 1), num_classes=10)
    perturb_(model)
    model.reset_classifier(5, tuple("abcde"))
    assert model.cfg.num_classes == 5 and model.cfg.class_names == tuple("abcde")
    assert model(torch.randn(1, 3, 32, 32)).abs().max() == 0


def timm_hybrid(layers=(1, 1, 1), img_size=64, **kw):
    """timm's R50+ViT hybrid as `vit_base_r50_s16_224` builds it, with `layers` stem units."""
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import _resnetv2

    embed = partial(HybridEmbed, backbone=_resnetv2(layers))
    kw = {"depth": 1, "embed_dim": 64, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 7, **kw}
    model = VisionTransformer(img_size=img_size, patch_size=1, embed_layer=embed, **kw)
    return perturb_(model).eval()


@pytest.mark.parametrize(
    ("layers", "size"),
    [((1, 1, 1), 96), ((2, 1, 1, 1), 64), pytest.param((3, 4, 9), 64, marks=pytest.mark.slow)],
)
def test_hybrid_matches_timm(tmp_path, layers, size):
    ref = timm_hybrid(layers, size)
    path = tmp_path / "hybrid.safetensors"
    vitlab.weights.io.save_safetensors(ref.state_dict(), path)
    ours = vitlab.load_checkpoint(path, num_heads=2)  # head counts are not in the tensors
    assert ours.cfg.backbone.layers == layers and not ours.cfg.backbone.preact
    assert ours.cfg.img_size == size and ours.cfg.feature_stride == 2 ** (len(layers) + 1)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        _close(ours(x), ref(x))


def test_hybrid_registry_matches_timm_structure():
    for ours_name, timm_name in [
        ("vit_base_r50_s16_384", "vit_base_r50_s16_384"),
        ("r50_vit_l32", "vit_large_r50_s32_224"),
    ]:
        ours = vitlab.create_model(ours_name, device="meta")
        ref = timm.create_model(timm_name, pretrained=False, device="meta")
        shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes


@pytest.mark.parametrize(
    ("name", "kw", "size"),
    [
        ("bit_r50x1", {"layers": (1, 2, 1, 1)}, 64),
        ("bit_r50x1", {"layers": (1, 1, 1, 1), "stem_type": "small", "in_chans": 1}, 28),
        ("bit_r50x3", {"layers": (1, 1, 1, 1)}, 65),
        ("r50_vit_b16", {"depth": 1, "embed_dim": 64, "num_heads": 2, "mlp_dim": 64}, 64),
    ],
)
def test_flops_match_torch_flop_counter(name, kw, size):
    from torch.utils.flop_counter import FlopCounterMode

    from vitlab.models.flops import model_flops

    model = vitlab.create_model(name, img_size=size, **kw).eval()
    x = torch.randn(1, model.cfg.in_chans, size, size)
    run = model.forward_intermediates if hasattr(model, "forward_intermediates") else model
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        run(x)  # ViT: explicit attention, which the counter sees (it skips fused SDPA on CPU)
    assert model_flops(model.cfg) == fc.get_total_flops()
