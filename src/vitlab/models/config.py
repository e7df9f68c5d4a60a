"""Model configurations: the single source of truth for every architecture vitlab builds.

A config is plain data. It travels inside every checkpoint vitlab writes (as JSON in the
safetensors metadata), so a model can always be rebuilt from its file alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from vitlab.errors import ConfigError
from vitlab.fields import coerce_fields

Pool = Literal["token", "gap"]
PosEmbed = Literal["learn", "sincos"]
Act = Literal["gelu", "gelu_tanh"]
# ResNet stems: BiT's ("fixed"), the hybrid's TF-"SAME" one, or a stride-1 one for tiny images.
StemType = Literal["fixed", "same", "small"]
# Weight standardisation: (w - mean) / sqrt(var + eps) (timm, BiT) or / (std + eps) (vit_jax).
WeightStd = Literal["var", "std"]

# Input normalisation of the original (Google) ViT weights: values mapped to [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ResNetConfig:
    """ResNetV2 as in BiT (Kolesnikov et al. 2020): the paper's CNN baseline and hybrid stem.

    `preact=True` is BiT's pre-activation bottleneck; `preact=False` is the post-activation unit
    that vit_jax and timm use in the R50+ViT hybrid stem. `stem_type` is BiT's "fixed" stem, the
    hybrid's TF-"SAME" one, or "small" (3x3 stride 1, no pooling) for 28-64 px images.
    `weight_std` and `std_conv_eps` say how convolution weights are standardised (timm's
    sqrt(var + 1e-8) by default; vit_jax checkpoints use std + 1e-5), `gn_eps` the GroupNorm eps.
    """

    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_factor: int = 1
    stem_width: int = 64
    preact: bool = True
    stem_type: StemType = "fixed"
    std_conv_eps: float = 1e-8
    weight_std: WeightStd = "var"
    gn_groups: int = 32
    gn_eps: float = 1e-5
    drop_rate: float = 0.0
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    crop_pct: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance notes

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not self.layers or min(self.layers) < 1:
            raise ConfigError(f"layers needs at least one stage of >= 1 unit, got {self.layers}")
        _check_ranges(
            self,
            [
                ("width_factor", self.width_factor >= 1, ">= 1"),
                ("stem_width", self.stem_width >= 1, ">= 1"),
                ("gn_groups", self.gn_groups >= 1, ">= 1"),
                ("std_conv_eps", self.std_conv_eps > 0, "> 0"),
                ("gn_eps", self.gn_eps > 0, "> 0"),
                ("drop_rate", 0.0 <= self.drop_rate < 1.0, "in [0, 1)"),
            ],
        )
        width = self.stem_width * self.width_factor
        if width % self.gn_groups:  # every stage's channel count is a multiple of the stem's
            raise ConfigError(
                f"gn_groups={self.gn_groups} does not divide stem_width x width_factor = {width} "
                f"(each GroupNorm splits a multiple of {width} channels into gn_groups groups); "
                f"pick a divisor of {width}"
            )
        _check_common(self)

    @property
    def arch(self) -> str:
        return "resnetv2"

    @property
    def reduction(self) -> int:
        """Input pixels per feature-map pixel: the stem's 4 (1 for "small"), x2 per later stage."""
        return (1 if self.stem_type == "small" else 4) * 2 ** (len(self.layers) - 1)

    @property
    def out_chans(self) -> int:
        """Channels of the last stage: 4 x the stem width, doubled per stage after the first."""
        return 4 * self.stem_width * self.width_factor * 2 ** (len(self.layers) - 1)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResNetConfig:
        return _from_dict(cls, d)


@dataclass
class ViTConfig:
    """A Vision Transformer (paper section 3.1, Table 1).

    The knobs below the architecture fields are the ones that differ between the ecosystems whose
    weights vitlab loads (LayerNorm eps, GELU flavour, qkv bias, where the class token meets the
    position embedding).
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pool: Pool = "token"
    pos_embed: PosEmbed = "learn"
    representation_size: int | None = None
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    act: Act = "gelu"
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dynamic_img_size: bool = False
    class_names: tuple[str, ...] | None = None
    backbone: ResNetConfig | None = None
    # Interop details, defaulting to the paper's (vit_jax) layout.
    class_token: bool | None = None  # None: a class token exactly when pool == "token"
    # DeiT's distillation token (Touvron et al. 2021): a second prefix token, after the class
    # token, with its own position embedding and head (`head_dist`) that learns a teacher's
    # labels; the model's logits are the mean of the two heads'.
    distill_token: bool = False
    pos_embed_cls: bool = True  # the class token has its own position embedding (vit_jax, timm)
    fc_norm: bool = False  # LayerNorm after pooling instead of before (timm's "avg" models)
    zero_head: bool = False  # zero-initialise the head (the paper's fine-tuning, section 3.2)
    # Preprocessing the weights expect (the model's data config).
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    crop_pct: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance notes

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):  # from JSON: a checkpoint's metadata
            self.backbone = ResNetConfig.from_dict(self.backbone)
        coerce_fields(self)
        if self.class_token is None:
            self.class_token = self.pool == "token"
        _check_vit_ranges(self)
        _check_common(self)
        if self.pool == "token" and not self.class_token:
            raise ConfigError("pool='token' needs class_token=True; use pool='gap' without one")
        if self.distill_token and self.representation_size:
            raise ConfigError(
                "distill_token with representation_size is not a DeiT layout (DeiT has no "
                "pre-logits layer); set representation_size=None"
            )
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                "pick a head count that divides the width"
            )
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ConfigError(
                f"2-D sin-cos embeddings need embed_dim % 4 == 0, got {self.embed_dim}"
            )
        if self.backbone is None and self.img_size % self.patch_size:
            raise ConfigError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}; "
                "choose a resolution that is a multiple of the patch size"
            )

    @property
    def arch(self) -> str:
        return "vit" if self.backbone is None else "hybrid"

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def feature_stride(self) -> int:
        """Pixels per token side: the patch size, times the CNN stem's stride for a hybrid."""
        stem = 1 if self.backbone is None else self.backbone.reduction
        return self.patch_size * stem

    def grid_size(self, img_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        h, w = _pair(self.img_size if img_size is None else img_size)
        s = self.feature_stride
        return h // s, w // s

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, then the distillation token."""
        return int(bool(self.class_token)) + int(self.distill_token)

    def num_tokens(self, img_size: int | tuple[int, int] | None = None) -> int:
        gh, gw = self.grid_size(img_size)
        return gh * gw + self.num_prefix_tokens

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        return _from_dict(cls, d)


AnyConfig = ViTConfig | ResNetConfig


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _check_ranges(cfg: AnyConfig, checks: list[tuple[str, bool, str]]) -> None:
    """A ConfigError for the first (field, ok, allowed range) check that fails."""
    for name, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{name} must be {allowed}, got {getattr(cfg, name)!r}")


def _check_vit_ranges(cfg: ViTConfig) -> None:
    """The transformer's sizes, LayerNorm eps and dropout rates (before any division by them)."""
    rep = cfg.representation_size
    _check_ranges(
        cfg,
        [
            ("patch_size", cfg.patch_size >= 1, ">= 1"),
            ("embed_dim", cfg.embed_dim >= 1, ">= 1"),
            ("depth", cfg.depth >= 1, ">= 1"),
            ("num_heads", cfg.num_heads >= 1, ">= 1"),
            ("mlp_dim", cfg.mlp_dim >= 1, ">= 1"),
            ("representation_size", rep is None or rep >= 1, ">= 1 (or None: no pre-logits)"),
            ("layer_norm_eps", cfg.layer_norm_eps > 0, "> 0"),
            ("drop_rate", 0.0 <= cfg.drop_rate < 1.0, "in [0, 1)"),
            ("attn_drop_rate", 0.0 <= cfg.attn_drop_rate < 1.0, "in [0, 1)"),
            ("drop_path_rate", 0.0 <= cfg.drop_path_rate < 1.0, "in [0, 1)"),
        ],
    )


def _check_common(cfg: AnyConfig) -> None:
    """What both kinds share: sizes, the head, class names, preprocessing (mean/std per channel)."""
    _check_ranges(
        cfg,
        [
            ("img_size", cfg.img_size >= 1, ">= 1"),
            ("in_chans", cfg.in_chans >= 1, ">= 1"),
            ("num_classes", cfg.num_classes >= 0, ">= 0 (0 means no head)"),
            ("crop_pct", 0.0 < cfg.crop_pct <= 1.0, "in (0, 1]"),
        ],
    )
    for name in ("mean", "std"):
        v = getattr(cfg, name)
        if len(v) == 1 and cfg.in_chans > 1:
            v = v * cfg.in_chans
        elif len(v) == 3 and cfg.in_chans == 1:
            v = (sum(v) / 3,)
        if len(v) != cfg.in_chans:
            raise ConfigError(
                f"{name} has {len(v)} values but the model takes {cfg.in_chans} channels"
            )
        setattr(cfg, name, v)
    if cfg.class_names is not None and len(cfg.class_names) != cfg.num_classes:
        raise ConfigError(
            f"{len(cfg.class_names)} class names given for num_classes={cfg.num_classes}"
        )


def _to_dict(cfg: AnyConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["arch"] = cfg.arch
    return d


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names - {"arch"})
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**{k: v for k, v in d.items() if k in names})  # JSON lists become tuples there


def config_from_dict(d: dict[str, Any]) -> AnyConfig:
    """Rebuild a config written by `to_dict` (its `arch` says which kind)."""
    arch = d.get("arch", "vit")
    if arch == "resnetv2":
        return ResNetConfig.from_dict(d)
    return ViTConfig.from_dict(d)


def config_to_json(cfg: AnyConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def replace(cfg: AnyConfig, **overrides: Any) -> AnyConfig:
    """A copy of `cfg` with `overrides` applied; unknown names are a clear error."""
    names = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"unknown {type(cfg).__name__} field(s): {', '.join(unknown)}; "
            f"valid fields: {', '.join(sorted(names - {'extra'}))}"
        )
    if "class_names" in overrides and "num_classes" not in overrides and overrides["class_names"]:
        overrides["num_classes"] = len(overrides["class_names"])
    n, names = overrides.get("num_classes"), cfg.class_names
    if n is not None and "class_names" not in overrides and names and len(names) != n:
        overrides["class_names"] = None  # the old names no longer fit the new head
    if isinstance(cfg, ViTConfig) and "pool" in overrides and "class_token" not in overrides:
        overrides["class_token"] = None  # re-derive from the new pool
    return dataclasses.replace(cfg, **overrides)
