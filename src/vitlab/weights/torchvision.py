"""torchvision's ViT layout (`torchvision.models.vit_b_16` and friends).

`conv_proj` is the patch embedding, `nn.MultiheadAttention`'s `in_proj_weight` holds q, k and v
stacked row-wise exactly as vitlab's fused qkv does, and the head lives in `heads.head` (with
`heads.pre_logits` + tanh when a representation size is set). torchvision fixes LayerNorm eps to
1e-6, GELU to the exact form, qkv biases on, three input channels, and expects ImageNet
mean/std for its own weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.files import atomic_write
from vitlab.models.config import IMAGENET_MEAN, IMAGENET_STD, AnyConfig, ViTConfig
from vitlab.runtime.device import unwrap_model
from vitlab.weights.adapter import (
    GUESSED,
    Rule,
    Source,
    apply_rules,
    config_metadata,
    count_indexed,
    grid_from_tokens,
    guess_num_heads,
    imagenet_class_names,
    invert_rules,
    rule,
    stored_config,
)
from vitlab.weights.io import RawCheckpoint, save_safetensors

_BLOCK = "encoder.layers.encoder_layer_{}."


def rules(cfg: ViTConfig) -> list[Rule]:
    """vitlab <-> torchvision keys for `cfg` (the declarative map; every transform is identity)."""
    out = [
        rule("cls_token", "class_token"),
        rule("pos_embed", "encoder.pos_embedding"),
        rule("patch_embed.proj.weight", "conv_proj.weight"),
        rule("patch_embed.proj.bias", "conv_proj.bias"),
        rule("norm.weight", "encoder.ln.weight"),
        rule("norm.bias", "encoder.ln.bias"),
        rule("head.weight", "heads.head.weight", optional=True),
        rule("head.bias", "heads.head.bias", optional=True),
    ]
    if cfg.representation_size:
        out += [
            rule("pre_logits.fc.weight", "heads.pre_logits.weight"),
            rule("pre_logits.fc.bias", "heads.pre_logits.bias"),
        ]
    pairs = [
        ("norm1", "ln_1"),
        ("norm2", "ln_2"),
        ("attn.proj", "self_attention.out_proj"),
        ("mlp.fc1", "mlp.0"),
        ("mlp.fc2", "mlp.3"),
    ]
    for i in range(cfg.depth):
        tv = _BLOCK.format(i)
        for p in ("weight", "bias"):
            out += [rule(f"blocks.{i}.{ours}.{p}", f"{tv}{theirs}.{p}") for ours, theirs in pairs]
            out.append(rule(f"blocks.{i}.attn.qkv.{p}", f"{tv}self_attention.in_proj_{p}"))
    return out


def _detect(raw: RawCheckpoint) -> bool:
    return "conv_proj.weight" in raw.tensors and f"{_BLOCK.format(0)}ln_1.weight" in raw.tensors


def _infer(raw: RawCheckpoint) -> AnyConfig:
    stored = stored_config(raw)
    if stored is not None:  # a vitlab .safetensors export: what torchvision's layout lacks
        return stored
    sd = raw.tensors
    proj = sd["conv_proj.weight"]  # (D, 3, P, P)
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = count_indexed(raw.keys(), r"encoder\.layers\.encoder_layer_(\d+)\.")
    mlp = int(sd[f"{_BLOCK.format(0)}mlp.0.weight"].shape[0])
    side, _ = grid_from_tokens(sd["encoder.pos_embedding"].shape[1], 1)
    head = sd.get("heads.head.weight")
    pre = sd.get("heads.pre_logits.weight")
    num_classes = 0 if head is None else int(head.shape[0])
    heads, guessed = guess_num_heads(dim, depth, mlp)
    return ViTConfig(
        img_size=side * patch,
        patch_size=patch,
        num_classes=num_classes,
        class_names=imagenet_class_names() if num_classes == 1000 else None,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
        representation_size=None if pre is None else int(pre.shape[0]),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        extra={GUESSED: {"num_heads": guessed}},
    )


def _to_vitlab(raw: RawCheckpoint, cfg: AnyConfig) -> dict[str, torch.Tensor]:
    return apply_rules(rules(cfg), raw.tensors, f"{raw.path} (torchvision)")


def _check_exportable(cfg: AnyConfig) -> None:
    fixed = {
        "a plain ViT (no CNN stem)": isinstance(cfg, ViTConfig) and cfg.backbone is None,
        "pool='token' with a class-token position embedding": isinstance(cfg, ViTConfig)
        and cfg.pool == "token"
        and cfg.pos_embed_cls
        and not cfg.fc_norm,
        "learned position embeddings": getattr(cfg, "pos_embed", None) == "learn",
        "exact GELU (act='gelu')": getattr(cfg, "act", None) == "gelu",
        "LayerNorm eps 1e-6": getattr(cfg, "layer_norm_eps", None) == 1e-6,
        "qkv biases": getattr(cfg, "qkv_bias", False),
        "3 input channels": cfg.in_chans == 3,
        "no distillation token": not getattr(cfg, "distill_token", False),
    }
    broken = [what for what, ok in fixed.items() if not ok]
    if broken:
        raise CheckpointError(
            f"torchvision's VisionTransformer needs {', '.join(broken)}; export this model with "
            "format='timm' or 'vitlab' instead"
        )


def _export(model: nn.Module, path: Path) -> Path:
    """A state dict `torchvision.models.VisionTransformer.load_state_dict` takes: .safetensors
    when `path` ends so, else a plain tensor dict saved with torch.save (.pth)."""
    model = unwrap_model(model)
    _check_exportable(model.cfg)
    sd = invert_rules(rules(model.cfg), model.state_dict(), "torchvision's layout")
    path = Path(path)
    if path.suffix == ".safetensors":
        return save_safetensors(sd, path, config_metadata(model.cfg))
    flat = {k: v.contiguous() for k, v in sd.items()}
    return atomic_write(path, lambda tmp: torch.save(flat, tmp))


SOURCE = Source(
    name="torchvision",
    description="torchvision VisionTransformer state dict (conv_proj, "
    "encoder.layers.encoder_layer_N.self_attention.in_proj_weight)",
    detect=_detect,
    infer_config=_infer,
    to_vitlab=_to_vitlab,
    export=_export,
    resample="torchvision",
    suffixes=(".pth", ".pt", ".bin", ".safetensors"),
)
