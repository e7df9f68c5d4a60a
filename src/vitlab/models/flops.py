"""Analytic FLOP counts from a config (2 FLOPs per multiply-accumulate, attention included)."""

from __future__ import annotations

from vitlab.models.config import ViTConfig


def vit_flops(cfg: ViTConfig, img_size: int | tuple[int, int] | None = None) -> int:
    """Forward FLOPs for one image: patch projection, every block's matmuls (qkv, QK^T, AV,
    output projection, MLP) and the head. Norms, softmax and activations are not counted, as is
    usual (they are a fraction of a percent). Hybrids count the transformer part only."""
    gh, gw = cfg.grid_size(img_size)
    n_patch = gh * gw
    n = n_patch + cfg.num_prefix_tokens
    d, m = cfg.embed_dim, cfg.mlp_dim
    flops = 0
    if cfg.backbone is None:
        flops += 2 * n_patch * cfg.patch_size**2 * cfg.in_chans * d  # patch projection
    else:
        flops += 2 * n_patch * cfg.patch_size**2 * cfg.backbone.out_chans * d
    per_block = 2 * n * d * 3 * d  # qkv
    per_block += 2 * n * n * d * 2  # QK^T and attention @ V, all heads
    per_block += 2 * n * d * d  # output projection
    per_block += 2 * n * d * m * 2  # MLP
    flops += cfg.depth * per_block
    rep = cfg.representation_size
    if rep:
        flops += 2 * d * rep
    flops += 2 * (rep or d) * cfg.num_classes
    return flops
