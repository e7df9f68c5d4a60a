"""Analytic FLOP counts from a config (2 FLOPs per multiply-accumulate, attention included)."""

from __future__ import annotations

import math
from typing import Literal

from vitlab.models.config import AnyConfig, ResNetConfig, ViTConfig, _pair, replace

Mode = Literal["infer", "train"]


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


def resnet_flops(cfg: ResNetConfig, img_size: int | tuple[int, int] | None = None) -> int:
    """Forward FLOPs for one image through a ResNetV2: every convolution (stem, the three of each
    bottleneck, the projection shortcuts) and the head; norms and pooling are not counted.
    Every stride-2 layer (SAME or symmetric padding alike) maps a side s to ceil(s / 2)."""
    h, w = _pair(cfg.img_size if img_size is None else img_size)
    width = cfg.stem_width * cfg.width_factor
    k, s = (3, 1) if cfg.stem_type == "small" else (7, 2)
    h, w = math.ceil(h / s), math.ceil(w / s)
    flops = 2 * h * w * width * cfg.in_chans * k * k
    if cfg.stem_type != "small":  # the stem's 3x3 stride-2 max-pool
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    cin = width
    for i, depth in enumerate(cfg.layers):
        cout = 4 * width * 2**i
        mid = cout // 4
        for u in range(depth):
            stride = 2 if i > 0 and u == 0 else 1
            c_in = cin if u == 0 else cout
            flops += 2 * h * w * mid * c_in  # 1x1 reduce, before the stride
            h, w = math.ceil(h / stride), math.ceil(w / stride)
            flops += 2 * h * w * mid * mid * 9 + 2 * h * w * cout * mid  # 3x3 and 1x1 expand
            if u == 0:
                flops += 2 * h * w * cout * c_in  # projection shortcut
        cin = cout
    return flops + 2 * cin * cfg.num_classes


def model_flops(cfg: AnyConfig, img_size: int | tuple[int, int] | None = None) -> int:
    """Forward FLOPs of any vitlab model: a ViT, a hybrid (its CNN stem included) or a ResNet."""
    if isinstance(cfg, ResNetConfig):
        return resnet_flops(cfg, img_size)
    flops = vit_flops(cfg, img_size)
    if cfg.backbone is not None:
        stem = replace(cfg.backbone, in_chans=cfg.in_chans, num_classes=0, class_names=None)
        flops += resnet_flops(stem, cfg.img_size if img_size is None else img_size)
    return flops


def flops_per_image(
    cfg: ViTConfig, mode: Mode = "infer", img_size: int | tuple[int, int] | None = None
) -> int:
    """Analytic FLOPs per image of a ViT: the forward for inference; for a training step the
    forward plus, for every matmul, the gradient of its input and of its weight (2x the forward
    each), except the image itself, whose gradient is never computed."""
    fwd = vit_flops(cfg, img_size)
    if mode == "infer":
        return fwd
    gh, gw = cfg.grid_size(img_size)
    chans = cfg.in_chans if cfg.backbone is None else cfg.backbone.out_chans
    patch_input_grad = 2 * gh * gw * cfg.patch_size**2 * chans * cfg.embed_dim
    return 3 * fwd - patch_input_grad
