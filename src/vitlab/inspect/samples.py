"""Images to inspect a model on: a few test images of a dataset, one per class first."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitlab.data.images import to_mode
from vitlab.data.wds import ShardSet, first_images


def _labels_in_order(part) -> torch.Tensor:
    """The label of each position of an image set (a FileSet keeps an index into its labels)."""
    idx = getattr(part, "idx", None)
    return part.labels if idx is None else part.labels[idx]


def _pick(labels: torch.Tensor, n: int) -> list[int]:
    """Up to `n` positions: the first image of each class in class order, then the next ones."""
    firsts = [int((labels == c).nonzero()[0]) for c in labels.unique().tolist()][:n]
    taken = set(firsts)
    rest = (i for i in range(len(labels)) if i not in taken)
    return firsts + list(itertools.islice(rest, n - len(firsts)))


def _image_at(part, i: int) -> Image.Image:
    if hasattr(part, "images"):  # in memory: uint8 (N, C, H, W)
        arr = part.images[i].permute(1, 2, 0).numpy()  # (H, W, C)
        return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr.astype(np.uint8))
    return part.fetch(int(part.idx[i]))


def dataset_images(
    spec: str, root: str | Path | None = None, n: int = 6, channels: int = 3
) -> list[tuple[str, Image.Image]]:
    """`n` images of a dataset's test split (validation or training split when it has none),
    one per class first, named `<split><index>_<class>`, in the mode `channels` asks for. `spec`
    is a `--data` string of `vitlab train` (e.g. "fashion-mnist", "imagefolder:photos")."""
    from vitlab.data.datasets import load_data

    splits = load_data(spec, root)
    split = next(s for s in ("test", "val", "train") if getattr(splits, s) is not None)
    part = getattr(splits, split)
    if isinstance(part, ShardSet):  # WebDataset shards: streamed, so the first ones read
        return [
            (
                f"{split}_{key.rsplit(':', 1)[-1]}_{_safe(splits.class_names[y])}",
                to_mode(im, channels),
            )
            for y, key, im in first_images(part, n)
        ]
    labels = _labels_in_order(part)
    out = []
    for i in _pick(labels, n):
        name = _safe(splits.class_names[int(labels[i])])
        out.append((f"{split}{i}_{name}", to_mode(_image_at(part, i), channels)))
    return out


def _safe(name: str) -> str:
    """A class name as part of a file name."""
    return name.replace("/", "-").replace(" ", "_")
