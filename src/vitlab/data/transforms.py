"""Preprocessing on torchvision.transforms.v2."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def eval_transform(data_config: dict[str, Any]) -> v2.Compose:
    """The model's own evaluation preprocessing (`model.data_config`): resize the short side to
    img_size / crop_pct, centre-crop img_size, scale to [0, 1], normalise with mean/std.
    Takes a PIL image already in the model's channel mode (see `vitlab.data.images`)."""
    size = int(data_config["img_size"])
    crop_pct = float(data_config.get("crop_pct", 1.0))
    interp = _INTERP[data_config.get("interpolation", "bicubic")]
    resize = size if crop_pct >= 1.0 else int(size / crop_pct)
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, interpolation=interp, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(data_config["mean"]), list(data_config["std"])),
        ]
    )
