"""Variant names -> configs. Variants are data; paper and timm names are aliases.

Canonical names are short (`vit_b16`); the paper's ("ViT-B/16", "B/16") and timm's
("vit_base_patch16_384", "vit_base_patch16_224.augreg2_in21k_ft_in1k") resolve to them, with the
resolution a timm name carries applied as an override.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitlab.errors import UnknownModelError
from vitlab.models.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AnyConfig,
    ResNetConfig,
    ViTConfig,
    replace,
)


@dataclass(frozen=True)
class Variant:
    name: str
    config: AnyConfig
    description: str
    paper: bool = False  # a row of the paper's Table 1
    paper_params_m: float | None = None  # Table 1's parameter count, where it gives one
    aliases: tuple[str, ...] = field(default_factory=tuple)


_VARIANTS: dict[str, Variant] = {}
_ALIASES: dict[str, str] = {}

# Table 1 (and Ti/S from DeiT/timm): name -> (layers, width, mlp, heads, Table 1 params in M)
_SIZES = {
    "Ti": ("tiny", 12, 192, 768, 3, None),
    "S": ("small", 12, 384, 1536, 6, None),
    "B": ("base", 12, 768, 3072, 12, 86),
    "L": ("large", 24, 1024, 4096, 16, 307),
    "H": ("huge", 32, 1280, 5120, 16, 632),
}
_TIMM_SIZE = {v[0]: k for k, v in _SIZES.items()}
_TABLE1 = {("B", 16), ("L", 16), ("H", 14)}  # the representative of each Table 1 row


def resnet_depth(cfg: ResNetConfig) -> int:
    """The "50" of ResNet-50: the stem convolution, three per bottleneck unit, and the head."""
    return 2 + 3 * sum(cfg.layers)


def register(variant: Variant) -> Variant:
    if variant.name in _VARIANTS:
        raise ValueError(f"variant {variant.name!r} registered twice")
    _VARIANTS[variant.name] = variant
    for alias in variant.aliases:
        _ALIASES[alias.lower()] = variant.name
    return variant


def _register_paper_vits() -> None:
    for size, patch in [
        ("Ti", 16),
        ("S", 16),
        ("S", 32),
        ("B", 8),
        ("B", 16),
        ("B", 32),
        ("L", 16),
        ("L", 32),
        ("H", 14),
    ]:
        _, depth, dim, mlp, heads, params = _SIZES[size]
        cfg = ViTConfig(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_dim=mlp)
        register(
            Variant(
                name=f"vit_{size.lower()}{patch}",
                config=cfg,
                description=f"ViT-{size}/{patch}: {depth} layers, D {dim}, {heads} heads",
                paper=(size, patch) in _TABLE1,
                paper_params_m=params if (size, patch) in _TABLE1 else None,
                aliases=(f"ViT-{size}/{patch}", f"{size}/{patch}"),
            )
        )


def _register_small_vits() -> None:
    """Variants sized for 28-64 px images on a laptop CPU (Fashion-MNIST, CIFAR, digits)."""
    small = [
        ("vit_test", 32, 8, 32, 2, 2, 64, "unit-test size: 2 blocks, D 32"),
        ("vit_nano_p4", 32, 4, 64, 4, 4, 128, "4 blocks, D 64, patch 4: seconds per epoch"),
        ("vit_micro_p7", 28, 7, 128, 4, 4, 256, "4 blocks, D 128, patch 7: the 28 px demo"),
        ("vit_micro_p4", 32, 4, 128, 6, 4, 256, "6 blocks, D 128, patch 4 (Fashion-MNIST, CIFAR)"),
        ("vit_mini_p4", 32, 4, 192, 8, 6, 384, "8 blocks, D 192, patch 4 (CIFAR at 32 px)"),
        ("vit_mini_p8", 64, 8, 192, 8, 6, 384, "8 blocks, D 192, patch 8 (64 px images)"),
    ]
    for name, img, patch, dim, depth, heads, mlp, desc in small:
        cfg = ViTConfig(
            img_size=img,
            patch_size=patch,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            mlp_dim=mlp,
            num_classes=10,
        )
        register(Variant(name=name, config=cfg, description=desc))


def _register_deits() -> None:
    """DeiT's distilled ViTs (Touvron et al. 2021): Ti/S/B at patch 16 with a distillation
    token and its head; ImageNet's mean and std, crop 0.875, as their timm weights expect."""
    for size in ("Ti", "S", "B"):
        timm_size, depth, dim, mlp, heads, _ = _SIZES[size]
        cfg = ViTConfig(
            patch_size=16, embed_dim=dim, depth=depth, num_heads=heads, mlp_dim=mlp,
            distill_token=True, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875,
        )  # fmt: skip
        register(
            Variant(
                name=f"deit_{size.lower()}16_distilled",
                config=cfg,
                description=f"DeiT-{size}/16 distilled: ViT-{size}/16 with a distillation token",
                aliases=(f"deit_{timm_size}_distilled_patch16_224", f"DeiT-{size}/16-distilled"),
            )
        )


_register_paper_vits()
_register_small_vits()
_register_deits()


def _register_cnns() -> None:
    """BiT ResNet-v2 (the paper's CNN baselines, section 4.1) and the R50+ViT hybrids (section
    3.1, Table 6). timm's names are aliases; a resolution suffix sets img_size."""
    bits = [  # name, stages, width factor
        ("bit_r50x1", (3, 4, 6, 3), 1),
        ("bit_r101x1", (3, 4, 23, 3), 1),
        ("bit_r50x3", (3, 4, 6, 3), 3),
        ("bit_r152x2", (3, 8, 36, 3), 2),
    ]
    for name, layers, wf in bits:
        depth = resnet_depth(ResNetConfig(layers=layers))
        register(
            Variant(
                name=name,
                config=ResNetConfig(layers=layers, width_factor=wf),
                description=f"BiT ResNet-{depth}x{wf} (pre-activation, GroupNorm, WS)",
                aliases=(f"BiT-R{depth}x{wf}", f"resnetv2_{depth}x{wf}_bit"),
            )
        )
    stem = ResNetConfig(layers=(3, 4, 9), preact=False, stem_type="same", num_classes=0)
    hybrids = [  # name, stem stages, ViT size, timm name, paper name
        ("r50_vit_b16", (3, 4, 9), "B", "vit_base_r50_s16", "R50+ViT-B/16"),
        ("r50_vit_l32", (3, 4, 6, 3), "L", "vit_large_r50_s32", "R50+ViT-L/32"),
    ]
    for name, layers, size, timm_name, paper in hybrids:
        _, depth, dim, mlp, heads, _ = _SIZES[size]
        cfg = ViTConfig(
            patch_size=1,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            mlp_dim=mlp,
            backbone=replace(stem, layers=layers),
        )
        register(
            Variant(
                name=name,
                config=cfg,
                description=f"{paper} hybrid: ResNet stem {layers}, ViT-{size} on its features",
                aliases=(paper, timm_name),
            )
        )


_register_cnns()


def _register_small_hybrid() -> None:
    """A hybrid for 28-64 px images (section 3.1 at the size of the small ViTs): a 3-stage
    post-activation ResNet stem (a 3x3 stride-1 root of width 8, one bottleneck per stage of
    32, 64 and 128 channels, stride 4 in all) feeding vit_micro's transformer (D 128, 4 blocks)
    on its feature map, one token per feature pixel (7x7 at 28 px)."""
    stem = ResNetConfig(
        layers=(1, 1, 1), preact=False, stem_type="small", stem_width=8, gn_groups=8,
        num_classes=0,
    )  # fmt: skip
    cfg = ViTConfig(
        img_size=28, patch_size=1, embed_dim=128, depth=4, num_heads=4, mlp_dim=256,
        num_classes=10, backbone=stem,
    )  # fmt: skip
    register(
        Variant(
            name="r11_vit_micro",
            config=cfg,
            description="hybrid for 28-64 px: ResNet-11 stem (stride 4), vit_micro on its 7x7",
            aliases=("R11+ViT-micro",),
        )
    )


_register_small_hybrid()

_TIMM_VIT = re.compile(r"^vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)$")
_TIMM_HYBRID = re.compile(r"^(vit_(?:base|large)_r50_s(?:16|32))_(\d+)$")


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """A canonical variant name and the overrides an alias implies, or a clear error."""
    if name in _VARIANTS:
        return name, {}
    key = name.strip()
    base = key.split(".", 1)[0]  # timm pretrained tags: "vit_base_patch16_224.augreg_in21k"
    if base.lower() in _ALIASES:
        return _ALIASES[base.lower()], {}
    m = _TIMM_HYBRID.match(base.lower())
    if m and m.group(1) in _ALIASES:
        return _ALIASES[m.group(1)], {"img_size": int(m.group(2))}
    m = _TIMM_VIT.match(base.lower())
    if m:
        size, patch, img = _TIMM_SIZE[m.group(1)], int(m.group(2)), int(m.group(3))
        canonical = f"vit_{size.lower()}{patch}"
        if canonical in _VARIANTS:
            return canonical, {"img_size": img}
    close = difflib.get_close_matches(base, list(_VARIANTS) + list(_ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (`vitlab models` lists them all)")


def list_models(pattern: str | None = None, paper_only: bool = False) -> list[str]:
    """Canonical names of every registered variant, optionally filtered by a substring."""
    names = [n for n, v in _VARIANTS.items() if v.paper or not paper_only]
    return [n for n in names if pattern is None or pattern.lower() in n.lower()]


def get_variant(name: str) -> Variant:
    """The registered variant behind any of its names."""
    return _VARIANTS[resolve(name)[0]]


def matching_variants(**fields: Any) -> list[Variant]:
    """The variants whose config has every given field value, e.g.
    `matching_variants(embed_dim=768, depth=12, mlp_dim=3072)` (readers of files that do not
    store everything use it to fill in what is missing, such as the head count)."""
    return [
        v
        for v in _VARIANTS.values()
        if all(getattr(v.config, k, _MISSING) == want for k, want in fields.items())
    ]


_MISSING = object()


def variant_facts(name: str, img_size: int | None = None) -> dict[str, Any]:
    """One row of `vitlab models`: shape, parameters and GFLOPs of a variant at `img_size` (its
    own by default), computed on the meta device (no weights allocated)."""
    from vitlab.models.flops import model_flops

    v = get_variant(name)
    img = img_size or v.config.img_size
    model = create_model(name, device="meta", img_size=img)
    return {
        "name": v.name,
        "aliases": list(v.aliases),
        **_shape(v.config),
        "img_size": img,
        "params_m": round(model.num_params() / 1e6, 3),
        "paper_params_m": v.paper_params_m,
        "gflops": round(model_flops(model.cfg) / 1e9, 3),
        "description": v.description,
    }


def _shape(cfg: AnyConfig) -> dict[str, int | None]:
    """layers / width / mlp / heads / stride of a ViT, a hybrid or a ResNet (None where n/a);
    for CNNs "layers" is the ResNet depth and "width" the final channels."""
    if isinstance(cfg, ResNetConfig):
        return {
            "layers": resnet_depth(cfg),
            "width": cfg.out_chans,
            "mlp": None,
            "heads": None,
            "stride": cfg.reduction,
        }
    return {
        "layers": cfg.depth,
        "width": cfg.embed_dim,
        "mlp": cfg.mlp_dim,
        "heads": cfg.num_heads,
        "stride": cfg.feature_stride,
    }


def get_config(name: str, **overrides: Any) -> AnyConfig:
    """The config of a variant (by any of its names) with `overrides` applied."""
    canonical, implied = resolve(name)
    return replace(_VARIANTS[canonical].config, **{**implied, **overrides})


def build_model(cfg: AnyConfig) -> nn.Module:
    """The module a config describes."""
    if isinstance(cfg, ResNetConfig):
        from vitlab.models.resnet import ResNetV2

        return ResNetV2(cfg)
    from vitlab.models.vit import VisionTransformer

    return VisionTransformer(cfg)


def create_model(
    name: str | AnyConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a variant by name (or from a config) with config-field overrides.

    `device="meta"` builds the structure without allocating weights: use it to inspect the
    large variants (parameter counts, FLOPs) on a small machine.
    """
    cfg = replace(name, **overrides) if not isinstance(name, str) else get_config(name, **overrides)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model(cfg)
    return model.to(dtype) if dtype is not None else model
