"""Samplers and loaders: whole batches `(x, y, skipped)` for one process of a run.

Training order comes from `DistributedSampler` (seeded by seed and epoch, sharded by rank) and
each batch's augmentation seed from (seed, global step, rank), so a run resumed mid-epoch replays
exactly the batches an uninterrupted one would have seen. Evaluation shards in order and pads
every process to the same number of batches with index -1 (label ignored).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from torch.utils.data import DataLoader, DistributedSampler, Sampler

from vitlab.data.sets import AugmentedDataset, BatchKey, ImageSet, ShardSet, mix_seed
from vitlab.data.transforms import AugConfig
from vitlab.data.wds import ShardStream


class KeyBatchSampler(Sampler):
    """Yields `(seed, indices)` per batch for `AugmentedDataset.__getitems__` (see the module
    docstring); `rank` of `world` processes, `batch` images each."""

    def __init__(
        self,
        n: int,
        batch: int,
        seed: int,
        train: bool,
        steps_per_epoch: int = 0,
        *,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.n, self.batch, self.seed, self.train = n, batch, seed, train
        self.rank, self.world = rank, world
        self.steps_per_epoch, self.epoch, self.skip = steps_per_epoch, 0, 0
        self.sampler = DistributedSampler(
            range(n), world, rank, shuffle=True, seed=seed, drop_last=True
        )

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Batches of `epoch`, leaving out its first `skip` (a run resumed mid-epoch)."""
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def _indices(self) -> list[int]:
        if self.train:
            return self._train_indices()
        per = math.ceil(self.n / self.world)
        idx = [self.rank + self.world * i for i in range(per)]
        return [i if i < self.n else -1 for i in idx]

    def _train_indices(self) -> list[int]:
        """This epoch's order: one shuffle, or as many as an epoch of more steps than one pass
        needs (each seeded by epoch and pass)."""
        per_pass = len(self.sampler)
        passes = max(1, math.ceil(self.steps_per_epoch * self.batch / max(per_pass, 1)))
        if passes == 1:
            return list(self.sampler)
        idx = []
        for j in range(passes):
            self.sampler.set_epoch(self.epoch * passes + j)
            idx.extend(self.sampler)
        self.sampler.set_epoch(self.epoch)
        return idx

    def __len__(self) -> int:
        if self.train:
            return self.steps_per_epoch - self.skip
        return math.ceil(math.ceil(self.n / self.world) / self.batch)

    def __iter__(self) -> Iterator[BatchKey]:
        idx = self._indices()
        for b in range(self.skip, len(self) + self.skip):
            chunk = idx[b * self.batch : (b + 1) * self.batch]
            step = self.epoch * self.steps_per_epoch + b
            yield mix_seed(self.seed, step, self.rank, 0), chunk


def _identity(batch):
    return batch


def make_loader(
    dataset: AugmentedDataset | ShardStream, sampler: KeyBatchSampler | None, workers: int
) -> DataLoader:
    """Whole batches come from the dataset, `(x, y, skipped)`; workers prepare them ahead.

    An `AugmentedDataset` builds the batch the sampler's key names (`__getitems__`), and its
    workers live for the whole run. A `ShardStream` (no sampler) yields batches itself; its
    workers start afresh every epoch, so each one streams the epoch `set_epoch` chose."""
    batching = {"batch_size": None} if sampler is None else {"batch_sampler": sampler}
    return DataLoader(
        dataset,
        **batching,
        collate_fn=_identity,
        num_workers=workers,
        persistent_workers=workers > 0 and sampler is not None,
        prefetch_factor=4 if workers > 0 else None,
    )


def build_loader(
    images: ImageSet | ShardSet,
    aug: AugConfig,
    batch: int,
    *,
    seed: int = 0,
    train: bool = False,
    steps_per_epoch: int = 0,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
) -> tuple[DataLoader, KeyBatchSampler | ShardStream]:
    """This process's loader of `(x, y, skipped)` batches of `batch` images, and what
    `set_epoch` goes to: a key sampler over images that can be indexed, or a stream over
    WebDataset shards."""
    if isinstance(images, ShardSet):
        where = {"rank": rank, "world": world, "workers": workers}
        stream = ShardStream(
            images, aug, batch, seed=seed, train=train, steps_per_epoch=steps_per_epoch, **where
        )
        return make_loader(stream, None, workers), stream
    sampler = KeyBatchSampler(
        len(images), batch, seed, train, steps_per_epoch, rank=rank, world=world
    )
    return make_loader(AugmentedDataset(images, aug), sampler, workers), sampler
