"""The shared data types (vitlab.data.sets): unreadable files are skipped and counted, padding
indices dropped, and seeds are the same in every process."""

import subprocess
import sys

import torch
from PIL import Image

from vitlab.data.images import ImageError
from vitlab.data.sets import AugmentedDataset, FileSet, mix_seed
from vitlab.data.transforms import AugConfig


def _fetch(i):
    if i == 1:
        raise ImageError("file 1: truncated")
    return Image.new("RGB", (8, 8), (10 * i, 0, 0))


def test_a_file_set_skips_and_counts_unreadable_files():
    files = FileSet(_fetch, torch.tensor([0, 1, 2]), None)
    x, y, skipped = files.batch([0, 1, 2], AugConfig(img_size=8), torch.Generator())
    assert skipped == 1 and y.tolist() == [0, 2] and x.shape == (2, 3, 8, 8)


def test_padding_indices_are_dropped():
    ds = AugmentedDataset(FileSet(_fetch, torch.tensor([0, 1, 2]), None), AugConfig(img_size=8))
    _, y, _ = ds.__getitems__((0, [2, -1, -1]))
    assert y.tolist() == [2]


def test_seeds_are_the_same_in_every_process():
    code = "from vitlab.data.sets import mix_seed; print(mix_seed(3, 141, 1, 0))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert int(other.stdout) == mix_seed(3, 141, 1, 0) != mix_seed(3, 142, 1, 0)
