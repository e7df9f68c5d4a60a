"""timm's layout. vitlab's module names follow timm's, so the key map is the identity; what this
adapter adds is reading the architecture from the tensors and refusing what does not fit."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.models.config import AnyConfig, ResNetConfig, ViTConfig
from vitlab.models.registry import _VARIANTS
from vitlab.weights.checkpoint import Source, log, register_source, unwrap_model
from vitlab.weights.hub import imagenet_class_names
from vitlab.weights.io import RawCheckpoint, save_safetensors

_UNSUPPORTED = {
    "reg_token": "register tokens",
    "norm_pre.weight": "a pre-transformer LayerNorm (CLIP-style)",
    "attn_pool.latent": "attention pooling",
    "blocks.0.ls1.gamma": "LayerScale",
}


def _is_vit(keys: set[str] | dict) -> bool:
    return "patch_embed.proj.weight" in keys and "blocks.0.attn.qkv.weight" in keys


def _is_resnet(keys: set[str] | dict, prefix: str = "") -> bool:
    return f"{prefix}stem.conv.weight" in keys and f"{prefix}stages.0.blocks.0.conv1.weight" in keys


def _detect(raw: RawCheckpoint) -> bool:
    return _is_vit(raw.tensors) or _is_resnet(raw.tensors)


def _depth(keys: set[str], pattern: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def guess_num_heads(dim: int, depth: int, mlp: int) -> int:
    """Head counts are not in the tensors: take the registry's for the same (D, depth, MLP),
    else assume 64-wide heads as every variant of the paper has (H/14 aside)."""
    for v in _VARIANTS.values():
        c = v.config
        if isinstance(c, ViTConfig) and (c.embed_dim, c.depth, c.mlp_dim) == (dim, depth, mlp):
            return c.num_heads
    return max(1, dim // 64) if dim % 64 == 0 else 1


def grid_from_tokens(n_pos: int, n_prefix: int) -> tuple[int, bool]:
    """Side of the square patch grid held by `n_pos` embeddings, and whether the class token has
    one of its own."""
    for with_cls in (True, False) if n_prefix else (False,):
        n = n_pos - (n_prefix if with_cls else 0)
        side = math.isqrt(n) if n > 0 else 0
        if side * side == n and side > 0:
            return side, with_cls
    raise CheckpointError(f"{n_pos} position embeddings do not form a square patch grid")


def infer_vit_config(sd: dict[str, torch.Tensor]) -> ViTConfig:
    keys = set(sd)
    for key, what in _UNSUPPORTED.items():
        if key in keys:
            raise CheckpointError(
                f"this timm model uses {what} ({key}), which vitlab does not build"
            )
    proj = sd["patch_embed.proj.weight"]  # (D, C, P, P)
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    backbone = None
    if _is_resnet(keys, "patch_embed.backbone."):  # a hybrid: the CNN's output feeds the proj
        backbone = infer_resnet_config(sd, "patch_embed.backbone.")
        in_chans = backbone.in_chans
    depth = _depth(keys, r"blocks\.(\d+)\.")
    mlp = sd["blocks.0.mlp.fc1.weight"].shape[0]
    class_token = "cls_token" in keys
    side, pos_cls = grid_from_tokens(sd["pos_embed"].shape[1], int(class_token))
    fc_norm = "fc_norm.weight" in keys
    head = sd.get("head.weight")
    return ViTConfig(
        backbone=backbone,
        img_size=side * patch * (backbone.reduction if backbone else 1),
        patch_size=patch,
        in_chans=in_chans,
        num_classes=0 if head is None else head.shape[0],
        embed_dim=dim,
        depth=depth,
        num_heads=guess_num_heads(dim, depth, mlp),
        mlp_dim=mlp,
        pool="token" if class_token and not fc_norm else "gap",
        class_token=class_token,
        pos_embed_cls=pos_cls,
        fc_norm=fc_norm,
        qkv_bias="blocks.0.attn.qkv.bias" in keys,
    )


def infer_resnet_config(sd: dict[str, torch.Tensor], prefix: str = "") -> ResNetConfig:
    """A ResNetV2 config from timm's tensors under `prefix`.

    Pre-activation (BiT) nets have no stem norm and use BiT's "fixed" stem; post-activation ones
    are the hybrid's stem with TF-"SAME" padding, as timm builds both. A 3x3 stem conv is vitlab's
    "small" stem. timm's standardisation (eps 1e-8) and GroupNorm eps (1e-5) are the defaults.
    """
    keys = {k[len(prefix) :] for k in sd if k.startswith(prefix)}
    stem = sd[f"{prefix}stem.conv.weight"]  # (width, C, k, k)
    layers = tuple(_depth(keys, rf"stages\.{i}\.blocks\.(\d+)\.") for i in range(4))
    layers = tuple(n for n in layers if n)
    width = stem.shape[0]
    wf = width // 64 if width % 64 == 0 else 1
    preact = "stem.norm.weight" not in keys
    head = sd.get(f"{prefix}head.fc.weight")  # (classes, C, 1, 1)
    return ResNetConfig(
        layers=layers,
        width_factor=wf,
        stem_width=width // wf,
        preact=preact,
        stem_type="small" if stem.shape[-1] == 3 else ("fixed" if preact else "same"),
        in_chans=stem.shape[1],
        num_classes=0 if head is None else head.shape[0],
    )


def _infer(raw: RawCheckpoint) -> AnyConfig:
    sd = raw.tensors
    cfg = infer_vit_config(sd) if _is_vit(sd) else infer_resnet_config(sd)
    if cfg.num_classes == 1000:  # an ImageNet-1k head: its class names travel with it
        cfg.class_names = imagenet_class_names()
    return cfg


def _to_vitlab(raw: RawCheckpoint, cfg: AnyConfig) -> dict[str, torch.Tensor]:
    return dict(raw.tensors)


def _export(model: nn.Module, path: Path) -> Path:
    """A timm state dict as .safetensors (timm's `pretrained_cfg_overlay=dict(file=...)` reads
    it); the pre-logits layer, which timm's ViT does not have, is refused rather than dropped."""
    model = unwrap_model(model)
    sd = model.state_dict()
    if any(k.startswith("pre_logits.") for k in sd):
        raise CheckpointError(
            "timm's VisionTransformer has no pre-logits layer; export this model with "
            "format='google' or 'hf' instead, or fine-tune it without representation_size"
        )
    cfg = model.cfg
    if getattr(cfg, "act", "gelu") != "gelu" or getattr(cfg, "layer_norm_eps", 1e-6) != 1e-6:
        log.warning(
            "timm builds exact GELU and LayerNorm eps 1e-6 by default; this model uses act=%s, "
            "eps=%g: pass act_layer=%r and norm_layer=partial(nn.LayerNorm, eps=%g) to "
            "timm.create_model to reproduce its outputs exactly",
            cfg.act,
            cfg.layer_norm_eps,
            cfg.act,
            cfg.layer_norm_eps,
        )
    return save_safetensors(sd, path)


register_source(
    Source(
        name="timm",
        description="timm state dict (ViT: patch_embed.proj, blocks.N.attn.qkv; hybrid: "
        "patch_embed.backbone.stem.conv; ResNetV2: stem.conv, stages.N.blocks.M)",
        detect=_detect,
        infer_config=_infer,
        to_vitlab=_to_vitlab,
        export=_export,
    )
)
