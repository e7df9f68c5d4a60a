"""Google's original JAX/Flax `.npz` layout: vit_jax (google-research/vision_transformer) and
big_vision, including the R50+ViT hybrids.

Flax stores a Dense kernel as (in, out), a convolution as HWIO, and splits attention into
query/key/value kernels of shape (D, heads, head_dim) with an output kernel (heads, head_dim, D);
the rules below move each tensor with one small named transform. The architecture is read from
the arrays (the head count from the query kernel), and so are the numerics Google's code runs
with: flax's `nn.gelu` is `jax.nn.gelu(x, approximate=True)`, the tanh form (jax's API docs),
LayerNorm and GroupNorm use flax's eps 1e-6, and the hybrid's StdConv divides by (std + 1e-5).

Layouts read, from two independent facts of the file: the block sub-module names (published
vit_jax files: `encoderblock_N/` with `LayerNorm_0`, `MultiHeadDotProductAttention_1`,
`LayerNorm_2`, `MlpBlock_3`; current vit_jax and big_vision: `LayerNorm_0`,
`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`) and where the position embedding
sits (vit_jax: `Transformer/posembed_input/pos_embedding`; big_vision: `pos_embedding` at the
top, added to the patches before the class token joins); also "scan" files whose blocks are
stacked in one `encoderblock` with a leading layer axis; any of them under `opt/target/`,
`params/` or `params/img/`; and big_transfer's BiT ResNet files (`resnet/root_block/...`).

vitlab's exports add one array, `vitlab/config` (vitlab's config as JSON in a unicode array, no
pickle), so vitlab reads its own files back exactly while other readers ignore it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.files import atomic_write
from vitlab.models.config import AnyConfig, ResNetConfig, ViTConfig, config_from_dict
from vitlab.runtime.device import unwrap_model
from vitlab.weights.adapter import (
    Rule,
    Source,
    apply_rules,
    count_indexed,
    grid_from_tokens,
    imagenet_class_names,
    invert_rules,
    log,
    rule,
)
from vitlab.weights.io import RawCheckpoint

CONFIG_KEY = "vitlab/config"
_PREFIXES = ("opt/target/", "params/img/", "params/", "")
# Block sub-module names. Published vit_jax checkpoints come from the old flax.nn API, which
# numbered a block's sub-modules across types; flax.linen numbers each type on its own, so
# current vit_jax and big_vision write LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
# MlpBlock_0 (LayerNorm_0 is the first norm in both).
BlockNames = Literal["old", "new"]
_BLOCK_NAMES: dict[str, dict[str, str]] = {
    "old": {"mha": "MultiHeadDotProductAttention_1", "ln2": "LayerNorm_2", "mlp": "MlpBlock_3"},
    "new": {"mha": "MultiHeadDotProductAttention_0", "ln2": "LayerNorm_1", "mlp": "MlpBlock_0"},
}
# Where the learned position embedding sits, independently of the block names: inside the
# Transformer (vit_jax, old and new), or at the top (big_vision, for the patches only).
PosPlace = Literal["vit_jax", "big_vision"]
_POS_KEYS: dict[str, str] = {
    "vit_jax": "Transformer/posembed_input/pos_embedding",
    "big_vision": "pos_embedding",
}
_UNSUPPORTED = {"MAPHead_0/probe": "attention-pooling (MAP) heads"}
# What Google's code computes, field by field (the export warns about a model that differs).
# vit_jax and big_vision: flax's tanh GELU, LayerNorm eps 1e-6; vit_jax's hybrid stem
# (models_resnet.py): StdConv (w - mean) / (std + 1e-5), flax GroupNorm (32 groups, eps 1e-6).
_VIT_JAX_NUMERICS: dict[str, Any] = {"act": "gelu_tanh", "layer_norm_eps": 1e-6}
_VIT_JAX_STEM_NUMERICS: dict[str, Any] = {
    "weight_std": "std",
    "std_conv_eps": 1e-5,
    "gn_groups": 32,
    "gn_eps": 1e-6,
}
# big_transfer (its PyTorch, JAX and TF2 models alike): (w - mean) / sqrt(var + 1e-10),
# GroupNorm(32) with eps 1e-5. A tuple lists accepted values, big_transfer's first: timm's 1e-8,
# vitlab's default and what it reads these files with (infer_bit_config), is not warned about.
_BIT_NUMERICS: dict[str, Any] = {
    "weight_std": "var",
    "std_conv_eps": (1e-10, 1e-8),
    "gn_groups": 32,
    "gn_eps": 1e-5,
}


# ------------------------------------------------------------------------ named transforms
def _hwio_to_oihw(k: torch.Tensor) -> torch.Tensor:
    return k.permute(3, 2, 0, 1).contiguous()  # (kh, kw, in, out) -> (out, in, kh, kw)


def _oihw_to_hwio(w: torch.Tensor) -> list[torch.Tensor]:
    return [w.permute(2, 3, 1, 0).contiguous()]  # (out, in, kh, kw) -> (kh, kw, in, out)


def _transpose(k: torch.Tensor) -> torch.Tensor:
    return k.T.contiguous()  # Dense kernel (in, out) <-> Linear weight (out, in)


def _transposed(w: torch.Tensor) -> list[torch.Tensor]:
    return [w.T.contiguous()]


def _fuse_qkv_kernels(*ks: torch.Tensor) -> torch.Tensor:
    d = ks[0].shape[0]
    return torch.cat([k.reshape(d, -1).T for k in ks], dim=0)  # 3 x (D, h, hd) -> (3D, D)


def _fuse_qkv_biases(*bs: torch.Tensor) -> torch.Tensor:
    return torch.cat([b.reshape(-1) for b in bs], dim=0)  # 3 x (h, hd) -> (3D,)


def _out_kernel(k: torch.Tensor) -> torch.Tensor:
    return k.reshape(-1, k.shape[-1]).T.contiguous()  # (h, hd, D) -> (D, h*hd)


def _split_qkv(heads: int, is_bias: bool):
    def split(t: torch.Tensor) -> list[torch.Tensor]:
        d = t.shape[0] // 3
        if is_bias:
            return [c.reshape(heads, d // heads) for c in t.chunk(3)]  # (3D,) -> 3 x (h, hd)
        return [c.T.reshape(d, heads, d // heads) for c in t.chunk(3)]  # -> 3 x (D, h, hd)

    return split


def _to_out_kernel(heads: int):
    def split(w: torch.Tensor) -> list[torch.Tensor]:
        d = w.shape[0]
        return [w.T.reshape(heads, d // heads, d).contiguous()]  # (D, D) -> (h, hd, D)

    return split


# ---------------------------------------------------------------------------------- rules
def rules(cfg: ViTConfig, blocks: BlockNames = "old", pos: PosPlace = "vit_jax") -> list[Rule]:
    """vitlab <-> Google keys for `cfg`: `blocks` names the block sub-modules (`_BLOCK_NAMES`),
    `pos` says where the position embedding sits (`_POS_KEYS`)."""
    n = _BLOCK_NAMES[blocks]
    out = [
        rule("patch_embed.proj.weight", "embedding/kernel", _hwio_to_oihw, _oihw_to_hwio),
        rule("patch_embed.proj.bias", "embedding/bias"),
        rule("norm.weight", "Transformer/encoder_norm/scale"),
        rule("norm.bias", "Transformer/encoder_norm/bias"),
        rule("head.weight", "head/kernel", _transpose, _transposed, optional=True),
        rule("head.bias", "head/bias", optional=True),
    ]
    if cfg.class_token:
        out.append(rule("cls_token", "cls"))
    if cfg.pos_embed == "learn":
        out.append(rule("pos_embed", _POS_KEYS[pos]))
    if cfg.representation_size:
        out += [
            rule("pre_logits.fc.weight", "pre_logits/kernel", _transpose, _transposed),
            rule("pre_logits.fc.bias", "pre_logits/bias"),
        ]
    for i in range(cfg.depth):
        out += _block_rules(cfg, i, n)
    if cfg.backbone is not None:
        out += _resnet_rules(cfg.backbone, "patch_embed.backbone.")
    return out


def _block_rules(cfg: ViTConfig, i: int, n: dict[str, str]) -> list[Rule]:
    g, ours, h = f"Transformer/encoderblock_{i}/", f"blocks.{i}.", cfg.num_heads
    mha, mlp = f"{g}{n['mha']}/", f"{g}{n['mlp']}/"
    out = [
        rule(f"{ours}norm1.weight", f"{g}LayerNorm_0/scale"),
        rule(f"{ours}norm1.bias", f"{g}LayerNorm_0/bias"),
        rule(f"{ours}norm2.weight", f"{g}{n['ln2']}/scale"),
        rule(f"{ours}norm2.bias", f"{g}{n['ln2']}/bias"),
        rule(
            f"{ours}attn.qkv.weight",
            tuple(f"{mha}{c}/kernel" for c in ("query", "key", "value")),
            _fuse_qkv_kernels,
            _split_qkv(h, is_bias=False),
        ),
        rule(f"{ours}attn.proj.weight", f"{mha}out/kernel", _out_kernel, _to_out_kernel(h)),
        rule(f"{ours}attn.proj.bias", f"{mha}out/bias"),
    ]
    if cfg.qkv_bias:
        out.append(
            rule(
                f"{ours}attn.qkv.bias",
                tuple(f"{mha}{c}/bias" for c in ("query", "key", "value")),
                _fuse_qkv_biases,
                _split_qkv(h, is_bias=True),
            )
        )
    for r in (0, 1):
        out += [
            rule(f"{ours}mlp.fc{r + 1}.weight", f"{mlp}Dense_{r}/kernel", _transpose, _transposed),
            rule(f"{ours}mlp.fc{r + 1}.bias", f"{mlp}Dense_{r}/bias"),
        ]
    return out


def _resnet_rules(cfg: ResNetConfig, ours: str) -> list[Rule]:
    """The hybrid stem: `conv_root`, `gn_root`, `block{s}/unit{u}/{conv,gn}{1,2,3}` + proj."""
    out = [
        rule(f"{ours}stem.conv.weight", "conv_root/kernel", _hwio_to_oihw, _oihw_to_hwio),
        rule(f"{ours}stem.norm.weight", "gn_root/scale"),
        rule(f"{ours}stem.norm.bias", "gn_root/bias"),
    ]
    for s, depth in enumerate(cfg.layers):
        for u in range(depth):
            g, o = f"block{s + 1}/unit{u + 1}/", f"{ours}stages.{s}.blocks.{u}."
            parts = [(f"conv{r}", f"norm{r}", f"conv{r}", f"gn{r}") for r in (1, 2, 3)]
            if u == 0:
                parts.append(("downsample.conv", "downsample.norm", "conv_proj", "gn_proj"))
            for conv, norm, gconv, gnorm in parts:
                out += [
                    rule(f"{o}{conv}.weight", f"{g}{gconv}/kernel", _hwio_to_oihw, _oihw_to_hwio),
                    rule(f"{o}{norm}.weight", f"{g}{gnorm}/scale"),
                    rule(f"{o}{norm}.bias", f"{g}{gnorm}/bias"),
                ]
    return out


# -------------------------------------------------------------------------------- reading
def normalise(arrays: dict[str, Any], path: Any = "checkpoint") -> dict[str, Any]:
    """The model's arrays with the file's prefix removed and "scan" blocks unstacked."""
    prefix = next((p for p in _PREFIXES if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise CheckpointError(
            f"{path}: no 'embedding/kernel' array (also looked under {', '.join(_PREFIXES[:-1])}); "
            "this is not a Google ViT checkpoint"
        )
    flat = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    flat.pop(CONFIG_KEY, None)
    scan = "Transformer/encoderblock/"
    stacked = {k: v for k, v in flat.items() if k.startswith(scan)}
    for k, v in stacked.items():  # (depth, ...) -> depth arrays
        del flat[k]
        for i in range(v.shape[0]):
            flat[f"Transformer/encoderblock_{i}/{k[len(scan) :]}"] = v[i]
    return flat


def _block_names(flat: dict[str, Any], path: Any = "checkpoint") -> BlockNames:
    """The block naming, read from the first block's attention query kernel."""
    g = "Transformer/encoderblock_0/"
    keys = {b: f"{g}{n['mha']}/query/kernel" for b, n in _BLOCK_NAMES.items()}
    found = [b for b, k in keys.items() if k in flat]
    if len(found) != 1:
        raise CheckpointError(
            f"{path}: expected one of {keys['old']} (published vit_jax files) or {keys['new']} "
            f"(current vit_jax, big_vision), found {'both' if found else 'neither'}; "
            "this is not a Google ViT checkpoint vitlab reads"
        )
    return found[0]


def _pos_place(flat: dict[str, Any]) -> PosPlace | None:
    """Where the learned position embedding is; None when the file has none (sin-cos)."""
    return next((p for p, k in _POS_KEYS.items() if k in flat), None)


def _infer_backbone(flat: dict[str, Any]) -> ResNetConfig | None:
    if "conv_root/kernel" not in flat:
        return None
    stages = [s for s in range(1, 5) if f"block{s}/unit1/conv1/kernel" in flat]
    layers = tuple(count_indexed(flat, rf"block{s}/unit(\d+)/") - 1 for s in stages)  # 1-based
    root = flat["conv_root/kernel"]  # (7, 7, C, width)
    return ResNetConfig(
        layers=layers,
        stem_width=int(root.shape[-1]),
        preact=False,
        stem_type="same",
        std_conv_eps=1e-5,
        weight_std="std",
        gn_eps=1e-6,
        in_chans=int(root.shape[2]),
        num_classes=0,
    )


def infer_config(flat: dict[str, Any], path: Any = "checkpoint") -> ViTConfig:
    """The architecture and Google's numerics from normalised arrays."""
    for key, what in _UNSUPPORTED.items():
        if key in flat:
            raise CheckpointError(
                f"this checkpoint uses {what} ({key}), which vitlab does not build"
            )
    n, place = _BLOCK_NAMES[_block_names(flat, path)], _pos_place(flat)
    kernel = flat["embedding/kernel"]  # (P, P, C, D)
    patch, chans, dim = int(kernel.shape[0]), int(kernel.shape[2]), int(kernel.shape[3])
    backbone = _infer_backbone(flat)
    mha = f"Transformer/encoderblock_0/{n['mha']}/"
    heads = int(flat[f"{mha}query/kernel"].shape[1])
    mlp = int(flat[f"Transformer/encoderblock_0/{n['mlp']}/Dense_0/kernel"].shape[1])
    cls = "cls" in flat
    pos = None if place is None else flat[_POS_KEYS[place]]
    side, pos_cls = grid_from_tokens(int(pos.shape[1]), int(cls)) if pos is not None else (0, False)
    head = flat.get("head/kernel")
    num_classes = 0 if head is None else int(head.shape[-1])
    pre = flat.get("pre_logits/kernel")
    return ViTConfig(
        img_size=side * patch * (backbone.reduction if backbone else 1),
        patch_size=patch,
        in_chans=backbone.in_chans if backbone else chans,
        num_classes=num_classes,
        class_names=imagenet_class_names() if num_classes == 1000 else None,
        embed_dim=dim,
        depth=count_indexed(flat, r"Transformer/encoderblock_(\d+)/"),
        num_heads=heads,
        mlp_dim=mlp,
        pool="token" if cls else "gap",
        class_token=cls,
        pos_embed_cls=pos_cls,
        pos_embed="learn" if pos is not None else "sincos",
        representation_size=None if pre is None else int(pre.shape[-1]),
        qkv_bias=f"{mha}query/bias" in flat,
        layer_norm_eps=1e-6,
        act="gelu_tanh",
        backbone=backbone,
    )


# ------------------------------------------------------------- BiT ResNets (big_transfer)
_BIT = "resnet/"


def _is_bit(arrays: dict[str, Any]) -> bool:
    return f"{_BIT}root_block/standardized_conv2d/kernel" in arrays


def bit_rules(cfg: ResNetConfig) -> list[Rule]:
    """vitlab <-> big_transfer keys (under "resnet/"): `root_block`, `block{s}/unit{uu}/{a,b,c}`
    (pre-activation: each GroupNorm precedes its convolution), `group_norm`, `head/conv2d`."""
    conv = "standardized_conv2d/kernel"
    out = [
        rule("stem.conv.weight", f"root_block/{conv}", _hwio_to_oihw, _oihw_to_hwio),
        rule("norm.weight", "group_norm/gamma"),
        rule("norm.bias", "group_norm/beta"),
        rule("head.fc.weight", "head/conv2d/kernel", _hwio_to_oihw, _oihw_to_hwio, optional=True),
        rule("head.fc.bias", "head/conv2d/bias", optional=True),
    ]
    for s, depth in enumerate(cfg.layers):
        for u in range(depth):
            g, o = f"block{s + 1}/unit{u + 1:02d}/", f"stages.{s}.blocks.{u}."
            for r, part in enumerate("abc", start=1):
                out += [
                    rule(f"{o}conv{r}.weight", f"{g}{part}/{conv}", _hwio_to_oihw, _oihw_to_hwio),
                    rule(f"{o}norm{r}.weight", f"{g}{part}/group_norm/gamma"),
                    rule(f"{o}norm{r}.bias", f"{g}{part}/group_norm/beta"),
                ]
            if u == 0:
                proj = f"{g}a/proj/{conv}"
                out.append(rule(f"{o}downsample.conv.weight", proj, _hwio_to_oihw, _oihw_to_hwio))
    return out


def infer_bit_config(flat: dict[str, Any]) -> ResNetConfig:
    """A BiT ResNet-v2 from big_transfer's arrays, with timm's numerics for these weights
    (standardisation eps 1e-8 on the variance, GroupNorm eps 1e-5); the input size is not
    stored (224). big_transfer's own PyTorch code adds 1e-10 to the variance instead; the
    standardised weights then differ by (1e-8 - 1e-10) / (2 var) relative, 5e-5 for a kernel
    variance of 1e-4."""
    root = flat["root_block/standardized_conv2d/kernel"]  # (7, 7, C, width)
    width = int(root.shape[-1])
    wf = width // 64 if width % 64 == 0 else 1
    stages = [s for s in range(1, 5) if f"block{s}/unit01/a/group_norm/gamma" in flat]
    head = flat.get("head/conv2d/bias")
    num_classes = 0 if head is None else int(head.shape[0])
    return ResNetConfig(
        layers=tuple(count_indexed(flat, rf"block{s}/unit(\d+)/") - 1 for s in stages),  # 1-based
        width_factor=wf,
        stem_width=width // wf,
        in_chans=int(root.shape[2]),
        num_classes=num_classes,
        class_names=imagenet_class_names() if num_classes == 1000 else None,
    )


def _bit_arrays(arrays: dict[str, Any]) -> dict[str, Any]:
    return {k[len(_BIT) :]: v for k, v in arrays.items() if k.startswith(_BIT)}


# ------------------------------------------------------------------------------ the source
def _detect(raw: RawCheckpoint) -> bool:
    return _is_bit(raw.tensors) or any(f"{p}embedding/kernel" in raw.tensors for p in _PREFIXES)


def _infer(raw: RawCheckpoint) -> AnyConfig:
    stored = raw.tensors.get(CONFIG_KEY)
    if stored is not None:  # written by vitlab: the exact config
        return config_from_dict(json.loads(str(np.asarray(stored))))
    if _is_bit(raw.tensors):
        return infer_bit_config(_bit_arrays(raw.tensors))
    return infer_config(normalise(raw.tensors, raw.path), raw.path)


def _to_vitlab(raw: RawCheckpoint, cfg: AnyConfig) -> dict[str, torch.Tensor]:
    what = f"{raw.path} (google)"
    if _is_bit(raw.tensors):
        if not isinstance(cfg, ResNetConfig):
            raise CheckpointError(f"{raw.path} holds a BiT ResNet; load it as one (bit_r50x1, ...)")
        return apply_rules(bit_rules(cfg), _bit_arrays(raw.tensors), what)
    if not isinstance(cfg, ViTConfig):
        raise CheckpointError(f"{raw.path}: Google ViT weights need a ViT model, not {cfg.arch}")
    flat = normalise(raw.tensors, raw.path)
    blocks, place = _block_names(flat, raw.path), _pos_place(flat) or "vit_jax"
    return apply_rules(rules(cfg, blocks, place), flat, what)


# -------------------------------------------------------------------------------- writing
def _check_exportable(cfg: AnyConfig) -> None:
    if isinstance(cfg, ResNetConfig):
        if not cfg.preact or cfg.stem_type != "fixed":
            raise CheckpointError(
                "the BiT layout holds pre-activation ResNets with BiT's stem; export this one "
                "as 'timm' or 'vitlab'"
            )
        return
    problems = {
        "learned position embeddings": getattr(cfg, "pos_embed", "") == "learn",
        "qkv biases": getattr(cfg, "qkv_bias", False),
        "fc_norm=False": not getattr(cfg, "fc_norm", True),
        "a post-activation hybrid stem": getattr(cfg, "backbone", None) is None
        or not cfg.backbone.preact,
        "no distillation token (vit_jax has none; export DeiT layouts as 'timm' or 'hf')": not (
            getattr(cfg, "distill_token", False)
        ),
    }
    broken = [what for what, ok in problems.items() if not ok]
    if broken:
        raise CheckpointError(f"the Google layout needs {', '.join(broken)}")


def _differences(cfg: AnyConfig, expected: dict[str, Any], prefix: str = "") -> list[str]:
    """`field=theirs (this model: ours)` for each field of `cfg` that `expected` does not accept."""
    out = []
    for name, want in expected.items():
        accepted = want if isinstance(want, tuple) else (want,)
        have = getattr(cfg, name)
        if have not in accepted:
            out.append(f"{prefix}{name}={accepted[0]!r} (this model: {have!r})")
    return out


def _warn_numerics(cfg: AnyConfig) -> None:
    """Google's code runs fixed numerics whatever the file holds: name the fields where this
    model differs (its weights still convert exactly, and vitlab/timm read them as they are)."""
    if isinstance(cfg, ResNetConfig):
        who, diffs = "big_transfer computes", _differences(cfg, _BIT_NUMERICS)
    else:
        who, diffs = "vit_jax and big_vision compute", _differences(cfg, _VIT_JAX_NUMERICS)
        if cfg.backbone is not None:
            diffs += _differences(cfg.backbone, _VIT_JAX_STEM_NUMERICS, "backbone.")
    if diffs:
        log.warning(
            "exporting to the Google layout: %s %s instead, so this file's outputs there will "
            "differ from this model's (vitlab reads it back exactly from its vitlab/config array)",
            who,
            ", ".join(diffs),
        )


def _export(model: nn.Module, path: Path) -> Path:
    """A vit_jax-layout .npz (big_vision's when position embeddings skip the class token; for a
    BiT ResNet, big_transfer's) that timm's npz readers load, plus vitlab's config in
    `vitlab/config`."""
    model = unwrap_model(model)
    cfg = model.cfg
    _check_exportable(cfg)
    _warn_numerics(cfg)
    if isinstance(cfg, ResNetConfig):
        sd = invert_rules(bit_rules(cfg), model.state_dict(), "the BiT layout")
        sd = {f"{_BIT}{k}": v for k, v in sd.items()}
    else:
        vit_jax = cfg.pos_embed_cls or not cfg.class_token  # else big_vision's layout
        blocks, pos = ("old", "vit_jax") if vit_jax else ("new", "big_vision")
        sd = invert_rules(rules(cfg, blocks, pos), model.state_dict(), "the Google layout")
    arrays = {k: v.float().numpy() for k, v in sd.items()}
    arrays[CONFIG_KEY] = np.array(json.dumps(cfg.to_dict(), sort_keys=True))
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    return atomic_write(path, write)


SOURCE = Source(
    name="google",
    description="Google JAX .npz (vit_jax or big_vision: embedding/kernel, "
    "Transformer/encoderblock_N, optional opt/target/ or params/ prefix; BiT: "
    "resnet/root_block/standardized_conv2d/kernel)",
    detect=_detect,
    infer_config=_infer,
    to_vitlab=_to_vitlab,
    export=_export,
    resample="google",
    suffixes=(".npz",),
)
