"""The types every data module shares: image sets, the splits a `--data` spec resolves to, the
dataset a loader draws whole batches from, and seeds.

- `ArraySet`: small sets held in memory as one uint8 tensor, augmented a batch at a time;
- `FileSet`: image files decoded on demand (a file that cannot be read is skipped and counted);
- `ShardSet`: WebDataset shards, streamed by `vitlab.data.wds.ShardStream`;
- `DataSplits`: train/val/test and the facts of a dataset (classes, channels, normalisation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch.utils.data import Dataset

from vitlab.data.images import ImageError
from vitlab.data.transforms import AugConfig, augment_batch, sample_transform
from vitlab.errors import VitlabError

log = logging.getLogger("vitlab")

Batch = tuple[torch.Tensor, torch.Tensor, int]  # uint8 images, labels, files skipped
BatchKey = tuple[int, Sequence[int]]  # (seed of this batch's augmentation, sample indices)


class DatasetError(VitlabError):
    """A dataset that is missing, empty or laid out differently from what vitlab expects."""


def mix_seed(*parts: int) -> int:
    """A reproducible 62-bit seed from integers (Python hashes int tuples deterministically)."""
    return hash(tuple(parts)) & (2**62 - 1)


# ------------------------------------------------------------------------------ image sets
class ArraySet:
    """Images held in memory: uint8 (N, C, H, W) and int64 labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> torch.Tensor:
        """The label of each member, in order."""
        return self.labels

    def subset(self, idx: torch.Tensor) -> ArraySet:
        return ArraySet(self.images[idx], self.labels[idx])

    def relabel(self, mapping: torch.Tensor) -> ArraySet:
        """The same images with label y replaced by `mapping[y]`."""
        return ArraySet(self.images, mapping[self.labels])

    def batch(
        self, indices: Sequence[int], aug: AugConfig, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return augment_batch(self.images[idx], aug, g), self.labels[idx], 0


class FileSet:
    """Images decoded on demand: `fetch(i)` returns a PIL image (or raises ImageError)."""

    def __init__(
        self, fetch: Callable[[int], Image.Image], labels: torch.Tensor, idx: torch.Tensor | None
    ) -> None:
        self.fetch, self.labels = fetch, labels.long()
        self.idx = torch.arange(len(labels)) if idx is None else idx

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def targets(self) -> torch.Tensor:
        """The label of each member, in order."""
        return self.labels[self.idx]

    def subset(self, idx: torch.Tensor) -> FileSet:
        return FileSet(self.fetch, self.labels, self.idx[idx])

    def relabel(self, mapping: torch.Tensor) -> FileSet:
        """The same files with label y replaced by `mapping[y]`."""
        return FileSet(self.fetch, mapping[self.labels], self.idx)

    def batch(
        self, indices: Sequence[int], aug: AugConfig, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        tf = sample_transform(aug)
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        xs, ys, skipped = [], [], 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in indices:
                j = int(self.idx[i])
                try:
                    img = self.fetch(j)
                except ImageError as e:
                    log.warning("skipping %s", e)
                    skipped += 1
                    continue
                xs.append(tf(img))
                ys.append(self.labels[j])
        if not xs:
            empty = torch.zeros(0, aug.channels, aug.img_size, aug.img_size, dtype=torch.uint8)
            return empty, torch.zeros(0, dtype=torch.long), skipped
        x = augment_batch(torch.stack(xs), _batch_only(aug), g)  # erasing, channel fit
        return x, torch.stack(ys), skipped


def _batch_only(aug: AugConfig) -> AugConfig:
    """The parts of the augmentation that run on the stacked batch of decoded files."""
    from dataclasses import replace

    return replace(aug, scale=1.0, pad_crop=0, hflip=0.0, randaug_m=0)


ImageSet = ArraySet | FileSet


@dataclass(frozen=True)
class ShardSet:
    """The WebDataset shards of one split and how many samples each holds (from the scan at
    start; streamed by `vitlab.data.wds.ShardStream`)."""

    pattern: str
    urls: tuple[str, ...]
    sizes: tuple[int, ...]
    labelled: bool = True  # False: images only (pre-training), every label 0

    def __len__(self) -> int:
        return sum(self.sizes)


class AugmentedDataset(Dataset):
    """A map-style dataset whose DataLoader yields whole batches: the batch sampler hands
    `(seed, indices)` keys to `__getitems__`, which augments the batch with that seed (negative
    indices are padding that keeps every process at the same number of batches; dropped)."""

    def __init__(self, images: ImageSet, aug: AugConfig) -> None:
        self.images, self.aug = images, aug

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = self.__getitems__((i, [i]))
        return x[0], y[0]

    def __getitems__(self, key: BatchKey) -> tuple[torch.Tensor, torch.Tensor, int]:
        seed, indices = key
        g = torch.Generator().manual_seed(int(seed))
        return self.images.batch([i for i in indices if i >= 0], self.aug, g)  # -1: padding


# -------------------------------------------------------------------------------- the splits
@dataclass
class DataSplits:
    """What a `--data` spec resolves to: train/val/test image sets and their facts."""

    name: str
    train: ImageSet | ShardSet
    val: ImageSet | ShardSet | None
    test: ImageSet | ShardSet | None
    class_names: tuple[str, ...]
    in_chans: int
    img_size: int  # native resolution (the largest side for image files: 0 = varies)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
