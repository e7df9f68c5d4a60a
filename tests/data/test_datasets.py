import gzip
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.datasets import CIFAR10
from torchvision.datasets.mnist import read_image_file, read_label_file

from vitlab.data.datasets import (
    ArraySet,
    AugmentedDataset,
    DatasetError,
    load_data,
    read_idx,
    split_off,
)
from vitlab.data.transforms import AugConfig


def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _fake_fashion(root, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = np.arange(n) % 10
        _write_idx(root / f"{stem}-images-idx3-ubyte.gz", images, True)
        _write_idx(root / f"{stem}-labels-idx1-ubyte", labels, False)  # plain and gz both work
    return root


def test_idx_files_read_like_torchvision(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28))
    _write_idx(tmp_path / "img", images, False)
    _write_idx(tmp_path / "lbl", np.arange(5), False)
    _write_idx(tmp_path / "img.gz", images, True)
    assert torch.equal(read_idx(tmp_path / "img"), read_image_file(str(tmp_path / "img")))
    assert torch.equal(read_idx(tmp_path / "img.gz"), read_image_file(str(tmp_path / "img")))
    assert torch.equal(read_idx(tmp_path / "lbl").long(), read_label_file(str(tmp_path / "lbl")))


def test_fashion_mnist_from_a_data_root_with_a_validation_split(tmp_path):
    d = load_data("fashion-mnist", _fake_fashion(tmp_path), val_split=0.25, seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (30, 10, 20)
    assert d.class_names[0] == "T-shirt/top" and d.in_chans == 1
    assert d.train.images.shape[1:] == (1, 28, 28)


def test_missing_fashion_mnist_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_data("fashion-mnist", tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere" in msg and "train-images-idx3-ubyte" in msg and "--download" in msg


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    _write_idx(tmp_path / "img", np.zeros((4, 28, 28)), False)
    (tmp_path / "img").write_bytes((tmp_path / "img").read_bytes()[:100])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "img")


def test_split_off_is_stratified_disjoint_and_seeded():
    s = ArraySet(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.arange(100) % 4)
    s.images[:, 0, 0, 0] = torch.arange(100, dtype=torch.uint8)  # identify each image
    rest, held = split_off(s, 0.2, seed=3)
    assert torch.bincount(held.labels).tolist() == [5, 5, 5, 5]
    ids = set(rest.images[:, 0, 0, 0].tolist()) | set(held.images[:, 0, 0, 0].tolist())
    assert len(ids) == 100 and len(rest) == 80
    assert torch.equal(split_off(s, 0.2, seed=3)[1].images, held.images)


def test_digits_are_sklearns(tmp_path):
    from sklearn.datasets import load_digits

    d = load_data("digits")
    ref = load_digits()
    assert len(d.train) + len(d.test) == len(ref.target)
    assert d.train.images.max() == 255 and d.num_classes == 10


def _imagefolder(root, bad=()):
    for c, color in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20 + i, 18), color).save(root / c / f"{i}.png")
    for name in bad:
        (root / "cat" / name).write_bytes(b"not an image at all")
    return root


def test_imagefolder_skips_and_counts_unreadable_images(tmp_path):
    d = load_data("imagefolder:" + str(_imagefolder(tmp_path / "imgs", ["bad.jpg", "x.png"])))
    assert d.class_names == ("cat", "dog") and len(d.train) == 10
    ds = AugmentedDataset(d.train, AugConfig(16, 3, train=True, scale=0.5, hflip=0.5))
    x, y, skipped = ds.__getitems__((0, list(range(10))))
    assert skipped == 2 and x.shape == (8, 3, 16, 16) and len(y) == 8
    assert x[y == 1, 2].float().mean() > x[y == 1, 0].float().mean()  # dogs are blue


def test_imagefolder_with_train_and_val_folders(tmp_path):
    _imagefolder(tmp_path / "train")
    _imagefolder(tmp_path / "val")
    d = load_data(f"imagefolder:{tmp_path}", val_split=0.5)
    assert len(d.train) == 8 and len(d.val) == 8 and d.test is None


@pytest.mark.parametrize("layout", ["empty", "flat", "missing"])
def test_misplaced_imagefolder_names_the_path_and_the_layout(tmp_path, layout):
    root = tmp_path / "imgs"
    if layout != "missing":
        root.mkdir()
    if layout == "flat":
        Image.new("RGB", (8, 8)).save(root / "a.png")
    with pytest.raises(DatasetError) as e:
        load_data(f"imagefolder:{root}")
    assert str(root) in str(e.value) and "CLASS" in str(e.value)


def test_cifar10_through_torchvision_from_files_made_here(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batches[name] = data
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [0, 1, 2, 3]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # the files are not the real ones, so torchvision's md5 checks are switched off
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    d = load_data("cifar10", tmp_path)
    assert len(d.train) == 20 and len(d.test) == 4 and d.class_names[2] == "c2"
    ref = torch.from_numpy(batches["test_batch"].reshape(4, 3, 32, 32))
    assert torch.equal(d.test.images, ref)


def test_cifar_missing_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="--download"):
        load_data("cifar10", tmp_path)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DatasetError, match="fashion-mnist"):
        load_data("mnits")
