"""Augmentation on torchvision.transforms.v2: the training augmentation (random-resized crop, flip,
RandAugment, random erasing, mixup/cutmix), and datasets' evaluation geometry, which is
`vitlab.preprocess`'s (the one definition of a model's evaluation preprocessing).

In-memory datasets (Fashion-MNIST, CIFAR, digits) are augmented a whole batch at a time on uint8
tensors (`augment_batch`), which keeps two CPU cores on the model instead of on per-image Python
calls; image files go through the per-sample `sample_transform`. Every random draw comes from an
explicit seed, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2

from vitlab.preprocess import Preprocess


@dataclass(frozen=True)
class AugConfig:
    """What a dataset does to its images before they reach the model (uint8 in, uint8 out).

    `scale` is the smallest area fraction of a random-resized crop (1.0: no crop); `pad_crop`
    pads by that many pixels and crops back at a random offset (the classic small-image
    augmentation); `randaug_m` > 0 turns on RandAugment (Cubuk et al. 2020) with `randaug_n` ops;
    `erase` is the probability of random erasing (Zhong et al. 2020).
    """

    img_size: int
    channels: int = 3
    train: bool = False
    scale: float = 1.0
    pad_crop: int = 0
    hflip: float = 0.0
    randaug_n: int = 2
    randaug_m: int = 0
    erase: float = 0.0
    crop_pct: float = 1.0
    interpolation: str = "bicubic"


def sample_transform(aug: AugConfig) -> v2.Compose:
    """Per-image transform for image files: PIL in, uint8 (C, S, S) tensor out."""
    if not aug.train:
        p = Preprocess(aug.img_size, crop_pct=aug.crop_pct, interpolation=aug.interpolation)
        return v2.Compose([*p.geometry(), v2.ToDtype(torch.uint8)])
    ops: list[v2.Transform] = [
        v2.ToImage(),
        v2.RandomResizedCrop(aug.img_size, scale=(aug.scale, 1.0), antialias=True),
    ]
    if aug.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.randaug_m > 0:
        ops.append(v2.RandAugment(aug.randaug_n, aug.randaug_m))
    return v2.Compose([*ops, v2.ToDtype(torch.uint8)])


def augment_batch(x: torch.Tensor, aug: AugConfig, g: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch (B, C, H, W) -> (B, C, S, S), one independent draw per image.

    Evaluation only resizes to the model's resolution (the images are already centred)."""
    x = _fit_channels(x, aug.channels)
    if aug.train and aug.scale < 1.0:
        x = random_resized_crop(x, aug.img_size, aug.scale, g)
    elif x.shape[-1] != aug.img_size or x.shape[-2] != aug.img_size:
        x = v2.functional.resize(x, [aug.img_size, aug.img_size], antialias=True)
    if not aug.train:
        return x.contiguous()
    if aug.pad_crop:
        x = pad_crop(x, aug.pad_crop, g)
    if aug.hflip > 0:
        flip = torch.rand(x.shape[0], generator=g) < aug.hflip
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if aug.randaug_m > 0:
        x = randaugment(x, aug.randaug_n, aug.randaug_m, g)
    if aug.erase > 0:
        x = random_erase(x, aug.erase, g)
    return x.contiguous()


def _fit_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray data for an RGB model is repeated; RGB data for a gray model is averaged."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    return x.float().mean(1, keepdim=True).round().to(torch.uint8)


def random_resized_crop(
    x: torch.Tensor, size: int, min_scale: float, g: torch.Generator
) -> torch.Tensor:
    """RandomResizedCrop for a batch: area fraction U(min_scale, 1), aspect ratio log-U(3/4, 4/3),
    every box resampled to size x size at once with `roi_align` (bilinear)."""
    B, _, H, W = x.shape
    area = torch.empty(B).uniform_(min_scale, 1.0, generator=g)
    log_r = torch.empty(B).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    w = (torch.sqrt(area * log_r.exp()) * W).clamp(max=W)
    h = (torch.sqrt(area / log_r.exp()) * H).clamp(max=H)
    x0 = torch.rand(B, generator=g) * (W - w)
    y0 = torch.rand(B, generator=g) * (H - h)
    return crop_boxes(x, torch.stack([x0, y0, x0 + w, y0 + h], 1), size)


def crop_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample box i = (x0, y0, x1, y1) of image i to size x size: bilinear samples at the
    output pixel centres (`roi_align` with one sample per bin, pixel-aligned)."""
    rois = torch.cat([torch.arange(len(x), dtype=torch.float32)[:, None], boxes.float()], 1)
    out = roi_align(x.float(), rois, output_size=size, sampling_ratio=1, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)  # (B, C, size, size)


def pad_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` pixels and crop back to (H, W) at a random offset per image."""
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    iy = oy[:, None] + torch.arange(H)  # (B, H)
    ix = ox[:, None] + torch.arange(W)  # (B, W)
    b = torch.arange(B)[:, None, None, None]
    c = torch.arange(C)[None, :, None, None]
    return xp[b, c, iy[:, None, :, None], ix[:, None, None, :]]  # (B, C, H, W)


def random_erase(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Random erasing: with probability p per image, a rectangle of 2-33% of the area and aspect
    ratio log-U(0.3, 3.3) is replaced by uniform noise."""
    B, _, H, W = x.shape
    area = torch.empty(B).uniform_(0.02, 1 / 3, generator=g) * H * W
    log_r = torch.empty(B).uniform_(math.log(0.3), math.log(3.3), generator=g)
    h = torch.sqrt(area * log_r.exp()).round().clamp(1, H)
    w = torch.sqrt(area / log_r.exp()).round().clamp(1, W)
    y0 = (torch.rand(B, generator=g) * (H - h + 1)).floor()
    x0 = (torch.rand(B, generator=g) * (W - w + 1)).floor()
    ys = torch.arange(H)[None, :, None]  # (1, H, 1)
    xs = torch.arange(W)[None, None, :]  # (1, 1, W)
    inside = (ys >= y0[:, None, None]) & (ys < (y0 + h)[:, None, None])
    inside = inside & (xs >= x0[:, None, None]) & (xs < (x0 + w)[:, None, None])  # (B, H, W)
    on = torch.rand(B, generator=g) < p
    noise = torch.randint(0, 256, x.shape, generator=g, dtype=torch.uint8)
    return torch.where((inside & on[:, None, None])[:, None], noise, x)


def randaugment(x: torch.Tensor, n: int, m: int, g: torch.Generator) -> torch.Tensor:
    """RandAugment per image (torchvision's ops), seeded from `g`."""
    ra = v2.RandAugment(n, m)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([ra(img) for img in x])


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 normalised with the model's mean/std."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)  # (1, C, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


def mix_transform(mixup: float, cutmix: float, num_classes: int) -> v2.Transform | None:
    """Mixup (Zhang et al. 2018) and/or CutMix (Yun et al. 2019), one picked per batch; labels
    become (B, num_classes) soft targets. None when both alphas are 0."""
    ops: list[v2.Transform] = []
    if mixup > 0:
        ops.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        ops.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
