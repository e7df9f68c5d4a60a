"""Position-embedding resampling as each ecosystem does it (paper section 3.2).

Fine-tuning at a higher resolution keeps the patch size, so the patch grid grows and the learned
position embeddings are "2D-interpolated according to their location in the original image".
Every ecosystem interpolates a little differently; loading weights at a new resolution uses the
source's own method by default so the result equals what that library would compute:

- `google`: bilinear, align_corners=True (vit_jax's scipy.ndimage.zoom with order 1)
- `timm_npz`: bilinear, align_corners=False, no antialias (timm's .npz loader)
- `timm`: bicubic, align_corners=False, antialias (timm's state-dict filter)
- `hf`: bicubic, align_corners=False (transformers' interpolate_pos_encoding)
- `torchvision`: bicubic, align_corners=True (torchvision's interpolate_embeddings)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from vitlab.errors import ConfigError
from vitlab.models.layers import resample_pos_embed

Method = Literal["google", "timm_npz", "timm", "hf", "torchvision", "bicubic", "bilinear"]


@dataclass(frozen=True)
class Resampling:
    """One way to interpolate a (D, h, w) grid: `torch.nn.functional.interpolate` arguments."""

    mode: str
    align_corners: bool | None
    antialias: bool
    who: str


METHODS: dict[str, Resampling] = {
    "google": Resampling("bilinear", True, False, "vit_jax (scipy.ndimage.zoom, order 1)"),
    "timm_npz": Resampling("bilinear", False, False, "timm's .npz loader"),
    "timm": Resampling("bicubic", False, True, "timm's state-dict loader"),
    "hf": Resampling("bicubic", False, False, "Hugging Face transformers"),
    "torchvision": Resampling("bicubic", True, False, "torchvision"),
    "bicubic": Resampling("bicubic", False, True, "vitlab's default (as timm)"),
    "bilinear": Resampling("bilinear", False, False, "plain bilinear"),
}


def method_for(default: str | None, method: str | None = None) -> Resampling:
    """The resampling to use: `method` when given, else `default` (a checkpoint source's own,
    `Source.resample`), else bicubic."""
    name = method or default or "bicubic"
    if name not in METHODS:
        raise ConfigError(
            f"unknown position-embedding resampling {name!r}; choose from {', '.join(METHODS)}"
        )
    return METHODS[name]


def resample(
    posemb: torch.Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    method: str | Resampling = "bicubic",
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resample (1, prefix + gh*gw, D) position embeddings to `new_grid` with one ecosystem's
    method; the prefix (class-token) embeddings are kept unchanged."""
    r = method if isinstance(method, Resampling) else method_for(None, method)
    return resample_pos_embed(
        posemb,
        new_grid,
        old_grid,
        num_prefix_tokens,
        mode=r.mode,
        antialias=r.antialias,
        align_corners=r.align_corners,
    )
