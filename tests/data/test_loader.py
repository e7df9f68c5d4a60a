"""Samplers and loaders (vitlab.data.loader): a run resumed mid-epoch replays exactly the batches
an uninterrupted one would have seen; evaluation covers every image once over all processes."""

import torch

from vitlab.data.loader import KeyBatchSampler, build_loader
from vitlab.data.sets import ArraySet
from vitlab.data.transforms import AugConfig


def test_a_resumed_epoch_yields_the_batches_it_had_left():
    full = KeyBatchSampler(100, 8, seed=3, train=True, steps_per_epoch=12)
    full.set_epoch(2)
    part = KeyBatchSampler(100, 8, seed=3, train=True, steps_per_epoch=12)
    part.set_epoch(2, skip=5)
    assert list(part) == list(full)[5:]
    assert len(part) == 7
    other = KeyBatchSampler(100, 8, seed=3, train=True, steps_per_epoch=12)
    other.set_epoch(3)
    assert [k[1] for k in other] != [k[1] for k in full]  # another epoch, another order


def test_evaluation_covers_every_image_once_across_processes_and_pads_evenly():
    n, world = 10, 3
    seen, lengths = [], set()
    for rank in range(world):
        s = KeyBatchSampler(n, 2, seed=0, train=False, rank=rank, world=world)
        idx = [i for _, chunk in s for i in chunk]
        lengths.add(len(s))
        seen += [i for i in idx if i >= 0]
    assert sorted(seen) == list(range(n))
    assert len(lengths) == 1  # every process runs the same number of batches


def test_the_loader_yields_whole_augmented_batches():
    images = ArraySet(torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8), torch.arange(20))
    loader, sampler = build_loader(images, AugConfig(img_size=8, channels=1), 6)
    sampler.set_epoch(0)
    batches = list(loader)
    assert [len(y) for _, y, _ in batches] == [6, 6, 6, 2]
    assert torch.equal(torch.cat([y for _, y, _ in batches]), torch.arange(20))
    assert batches[0][0].shape == (6, 1, 8, 8) and batches[0][0].dtype == torch.uint8
