"""Datasets for training and evaluation, chosen by one string (`--data`).

- `fashion-mnist`: the idx files under `--data-root`, else Debian's `dataset-fashion-mnist`,
  else a previous download; `--download` fetches them through torchvision;
- `imagefolder:PATH`: class-per-folder images; `PATH/train` + `PATH/val` (and `PATH/test`), or
  one folder split by `val_split`; or a flat folder of images without class folders, one
  "unlabelled" class, for `vitlab pretrain`;
- `cifar10`, `cifar100`, `pets`, `flowers102`: through torchvision (the paper's transfer
  benchmarks, section 4.1);
- `digits`: scikit-learn's 8x8 digits (offline, seconds);
- `synthetic`: class-dependent random patterns, for tests and smoke runs;
- `wds:PATTERN`: WebDataset tar shards (`KEY.jpg` + `KEY.cls`), streamed for data beyond one
  disk; `{split}` in PATTERN becomes train/val/test (see `vitlab.data.wds`; `pip install
  'vitlab[wds]'`).

Small sets are held in memory as one uint8 tensor (`ArraySet`) and augmented a batch at a time;
image files (`FileSet`) are decoded with `vitlab.data.images.load_image`, and a file that cannot
be read is skipped and counted, never fatal. Shards (`vitlab.data.sets.ShardSet`) are streamed by
`ShardStream`, which decodes and augments their images as `FileSet` does.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitlab.data.images import IMAGE_SUFFIXES, ImageError, load_image
from vitlab.data.sets import (
    ArraySet,
    AugmentedDataset,
    DatasetError,
    DataSplits,
    FileSet,
    ImageSet,
)
from vitlab.errors import require

__all__ = ["ArraySet", "AugmentedDataset", "DataSplits", "DatasetError", "FileSet", "load_data"]

log = logging.getLogger("vitlab")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DATA_NAMES = ("fashion-mnist", "imagefolder:PATH", "cifar10", "cifar100", "pets", "flowers102")
DATA_NAMES += ("digits", "synthetic", "wds:PATTERN")


def default_data_root() -> Path:
    """Where downloads go: $VITLAB_DATA, else ~/.cache/vitlab/data."""
    return Path(os.environ.get("VITLAB_DATA", Path.home() / ".cache" / "vitlab" / "data"))


def load_data(
    spec: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    val_split: float = 0.0,
    seed: int = 0,
    labelled: bool = True,
) -> DataSplits:
    """Resolve a `--data` spec (see the module docstring) into train/val/test sets.

    `val_split` holds out that fraction of the training set (stratified, seeded) as validation
    where the dataset has no validation split of its own (not for `wds:`, an error there).
    `labelled=False` (pre-training) also accepts a flat folder of images and WebDataset shards
    without labels (one "unlabelled" class); with labels wanted, both are errors."""
    name, _, arg = spec.partition(":")
    loaders = {
        "fashion-mnist": lambda: _fashion_mnist(root, download),
        "imagefolder": lambda: _imagefolder(arg or root, labelled),
        "cifar10": lambda: _cifar(root, download, 10),
        "cifar100": lambda: _cifar(root, download, 100),
        "pets": lambda: _pets(root, download),
        "flowers102": lambda: _flowers(root, download),
        "digits": _digits,
        "synthetic": _synthetic,
        "wds": lambda: _wds(arg, val_split, labelled),
    }
    if name not in loaders:
        raise DatasetError(f"unknown dataset {spec!r}; choose one of {', '.join(DATA_NAMES)}")
    splits = loaders[name]()
    if splits.val is None and val_split > 0:
        splits.train, splits.val = split_off(splits.train, val_split, seed)
    for part in ("train", "val", "test"):
        s = getattr(splits, part)
        if s is not None and len(s) == 0:
            raise DatasetError(f"{spec}: the {part} split is empty")
    return splits


def split_off(images: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Hold out `fraction` of each class (seeded), returning (rest, held_out)."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"val_split must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    labels = images.targets
    held = []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        held.append(members[: max(1, round(fraction * len(members)))])
    held_idx = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_idx] = False
    return images.subset(keep.nonzero().flatten()), images.subset(held_idx)


# ------------------------------------------------------------------------------ Fashion-MNIST
def read_idx(path: Path) -> torch.Tensor:
    """An idx file (the MNIST format, optionally gzipped) as a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(
            f"{path}: cannot read this idx file ({e}); delete it and retry"
        ) from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DatasetError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: {body.size} values for shape {dims}")
    return torch.from_numpy(body.reshape(dims).copy())


def _find_idx(folder: Path, stem: str) -> Path | None:
    for sub in ("", "raw", "FashionMNIST/raw"):
        for suffix in ("", ".gz"):
            p = folder / sub / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def find_fashion_mnist(root: str | Path | None) -> Path | None:
    """The first folder holding all four idx files: `root`, Debian's package, the download
    cache (in that order; only `root` when one is given)."""
    candidates = [Path(root)] if root else [DEBIAN_FASHION_MNIST, default_data_root()]
    for folder in candidates:
        stems = [s for pair in FASHION_FILES.values() for s in pair]
        if all(_find_idx(folder, s) for s in stems):
            return folder
    return None


def _fashion_mnist(root: str | Path | None, download: bool) -> DataSplits:
    from torchvision.datasets import FashionMNIST

    folder = find_fashion_mnist(root)
    if folder is None and download:
        target = Path(root) if root else default_data_root()
        log.info("downloading Fashion-MNIST to %s", target)
        _torchvision_call(lambda: FashionMNIST(str(target), download=True), "fashion-mnist")
        folder = find_fashion_mnist(target)
    if folder is None:
        where = str(root) if root else f"{DEBIAN_FASHION_MNIST} or {default_data_root()}"
        raise DatasetError(
            f"Fashion-MNIST not found in {where} (expected train-images-idx3-ubyte[.gz] and the "
            "three other idx files); install Debian's dataset-fashion-mnist, point --data-root "
            "at the files, or pass --download"
        )
    parts = {}
    for split, (img_stem, lbl_stem) in FASHION_FILES.items():
        images = read_idx(_find_idx(folder, img_stem)).unsqueeze(1)  # (N, 1, 28, 28)
        parts[split] = ArraySet(images, read_idx(_find_idx(folder, lbl_stem)))
    return DataSplits(
        "fashion-mnist",
        parts["train"],
        None,
        parts["test"],
        tuple(FashionMNIST.classes),
        in_chans=1,
        img_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        notes={"source": str(folder)},
    )


# ------------------------------------------------------------------------- torchvision sets
def _torchvision_call(make: Callable, name: str):
    try:
        return make()
    except RuntimeError as e:
        if "not found" in str(e).lower() or "download" in str(e).lower():
            raise DatasetError(
                f"{name} not found under --data-root; pass --download to fetch it ({e})"
            ) from None
        raise
    except OSError as e:  # no network, unwritable folder
        raise DatasetError(f"{name}: download failed ({e}); check the network") from None


def _cifar(root: str | Path | None, download: bool, n: int) -> DataSplits:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, name = (CIFAR10, "cifar10") if n == 10 else (CIFAR100, "cifar100")
    base = str(root or default_data_root())
    sets = {}
    for split in ("train", "test"):
        ds = _torchvision_call(
            lambda s=split: cls(base, train=s == "train", download=download), name
        )
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        sets[split] = ArraySet(images, torch.tensor(ds.targets))
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return DataSplits(name, sets["train"], None, sets["test"], tuple(ds.classes), 3, 32, mean, std)


def _pil_fetch(ds) -> Callable[[int], Image.Image]:
    def fetch(i: int) -> Image.Image:
        try:
            return ds[i][0].convert("RGB")
        except OSError as e:
            raise ImageError(f"{name_of(ds, i)}: unreadable ({e})") from None

    return fetch


def name_of(ds, i: int) -> str:
    files = getattr(ds, "_images", None) or getattr(ds, "_image_files", None)
    return str(files[i]) if files else f"item {i}"


def _labels_of(ds) -> torch.Tensor:
    return torch.tensor(getattr(ds, "_labels", None) or [ds[i][1] for i in range(len(ds))])


def _pets(root: str | Path | None, download: bool) -> DataSplits:
    from torchvision.datasets import OxfordIIITPet

    base = str(root or default_data_root())
    sets = {}
    for split in ("trainval", "test"):
        make = lambda s=split: OxfordIIITPet(base, split=s, download=download)  # noqa: E731
        ds = _torchvision_call(make, "pets")
        sets[split] = FileSet(_pil_fetch(ds), _labels_of(ds), None)
    return DataSplits("pets", sets["trainval"], None, sets["test"], tuple(ds.classes), 3, 0)


def _flowers(root: str | Path | None, download: bool) -> DataSplits:
    from torchvision.datasets import Flowers102

    base = str(root or default_data_root())
    sets = {}
    for split in ("train", "val", "test"):
        make = lambda s=split: Flowers102(base, split=s, download=download)  # noqa: E731
        ds = _torchvision_call(make, "flowers102")
        sets[split] = FileSet(_pil_fetch(ds), _labels_of(ds), None)
    names = tuple(getattr(ds, "classes", None) or [f"flower {i}" for i in range(102)])
    return DataSplits("flowers102", sets["train"], sets["val"], sets["test"], names, 3, 0)


# ------------------------------------------------------------------------------ imagefolder
def _imagefolder(path: str | Path | None, labelled: bool = True) -> DataSplits:
    if not path:
        raise DatasetError("imagefolder needs a path: --data imagefolder:PATH")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; expected {root}/CLASS/IMAGE files")
    parts = {s: root / s for s in ("train", "val", "validation", "test") if (root / s).is_dir()}
    flat = _flat(root) if "train" not in parts else None
    if flat is not None and labelled:
        raise DatasetError(
            f"{root} holds images but no class folders: a classifier needs "
            f"{root}/CLASS_NAME/IMAGE files (a flat folder of images without labels is for "
            "`vitlab pretrain`)"
        )
    if flat is not None:
        return DataSplits(f"imagefolder:{root}", flat, None, None, (UNLABELLED,), 3, 0)
    if "train" not in parts:
        train, names = _folder(root)
        return DataSplits(f"imagefolder:{root}", train, None, None, names, 3, 0)
    train, names = _folder(parts["train"])
    val_dir = parts.get("val") or parts.get("validation")
    val = _folder(val_dir, names)[0] if val_dir else None
    test = _folder(parts["test"], names)[0] if "test" in parts else None
    return DataSplits(f"imagefolder:{root}", train, val, test, names, 3, 0)


UNLABELLED = "unlabelled"  # the one class of a flat folder of images


def _flat(root: Path) -> FileSet | None:
    """A flat folder of images without class folders (for pre-training without labels; every
    image gets label 0): its images in name order, or None when it has sub-folders."""
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return None
    paths = sorted(str(p) for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        return None
    return FileSet(lambda i: load_image(paths[i], 3), torch.zeros(len(paths)), None)


def _folder(root: Path, names: tuple[str, ...] | None = None) -> tuple[FileSet, tuple[str, ...]]:
    """torchvision's class-per-folder layout: ROOT/CLASS/IMAGE."""
    from torchvision.datasets.folder import find_classes, make_dataset

    layout = f"expected {root}/CLASS_NAME/IMAGE files ({', '.join(IMAGE_SUFFIXES[:4])}, ...)"
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError:
        raise DatasetError(f"{root} has no class folders; {layout}") from None
    if names is not None and tuple(classes) != names:
        raise DatasetError(f"{root} has classes {classes}, but the training split has {names}")
    try:
        samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, IMAGE_SUFFIXES)
    except FileNotFoundError as e:
        raise DatasetError(f"{root}: {e}; {layout}") from None
    paths = [p for p, _ in samples]
    labels = torch.tensor([y for _, y in samples])
    return FileSet(lambda i: load_image(paths[i], 3), labels, None), tuple(classes)


def _wds(pattern: str, val_split: float, labelled: bool = True) -> DataSplits:
    from vitlab.data.wds import load_shards

    return load_shards(pattern, val_split, labelled)


# ------------------------------------------------------------------------- offline sets
def _digits() -> DataSplits:
    """scikit-learn's 8x8 digits (1,797 images), 20% held out as the test split (stratified)."""
    d = require("sklearn.datasets", "digits", "--data digits").load_digits()
    images = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    full = ArraySet(images, torch.from_numpy(d.target))  # (1797, 1, 8, 8)
    train, test = split_off(full, 0.2, seed=0)
    return DataSplits("digits", train, None, test, tuple(str(i) for i in range(10)), 1, 8)


def synthetic_images(
    n: int, num_classes: int = 4, size: int = 16, seed: int = 0, noise_seed: int = 1
) -> ArraySet:
    """Learnable noise: each class is a fixed random pattern (from `seed`), each image that
    pattern plus Gaussian noise (from `noise_seed`)."""
    protos = torch.rand(num_classes, 3, size, size, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(n) % num_classes
    g = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn(n, 3, size, size, generator=g) * 40  # (N, 3, S, S)
    images = (protos[labels] * 255 + noise).clamp(0, 255).to(torch.uint8)
    return ArraySet(images, labels)


def _synthetic() -> DataSplits:
    train, test = synthetic_images(256, noise_seed=1), synthetic_images(64, noise_seed=2)
    names = tuple(f"pattern {i}" for i in range(4))
    return DataSplits("synthetic", train, None, test, names, 3, 16)
