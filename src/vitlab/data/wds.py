"""WebDataset tar shards (`--data wds:PATTERN`), streamed for data beyond one disk.

Layout (webdataset's): a sample is a run of consecutive tar members sharing a key, `KEY.jpg`
(or `.jpeg`, `.png`, `.webp`, any suffix of `IMAGE_SUFFIXES`) and `KEY.cls`, the integer label as
text. PATTERN is webdataset's notation: braces (`/data/train-{000000..000127}.tar`), several
patterns joined by `::`, local paths or anything webdataset opens (`https://...`, `pipe:CMD`).
Reading needs the `webdataset` package (`pip install 'vitlab[wds]'`).

Splits: a literal `{split}` in PATTERN is replaced by `train`, `val` and `test`. Every training
shard must exist; validation and test take the shards of the same range that exist (none: no
such split). Without `{split}` PATTERN is the training set alone, and `val_split` is an error
(validation comes from shards of its own, not from a hash of the keys).

Classes: `classes.txt` (one name per line) or `classes.json` (a list of names, or a mapping of
name to index) next to the first training shard names them; else they are "0".."K-1" with K the
largest label in the shards + 1.

Counting: every shard is scanned once at start, local files through their tar headers and the
tiny `.cls` members only (image bytes are seeked over), other URLs by streaming them once. The
scan gives each split's size (an epoch is as many samples as the training shards hold) and the
class count, and catches mis-laid data before training: a missing shard, a pattern without
shards, shards without images or without `.cls` labels are a `DatasetError` naming the pattern
and this layout. A shard that breaks part-way is read up to the break, with a warning.

Streaming (`ShardStream`): training shards are shuffled per epoch (the same order on every
process), split by node (process `rank` takes every `world`-th shard) and then by DataLoader
worker (the rule of webdataset's `split_by_node` / `split_by_worker`, applied with vitlab's own
rank). Each pass over a worker's shards is shuffled through a buffer of `SHUFFLE_BUFFER` samples (an
epoch that is one pass sees every sample once); samples are decoded by `decode_image` and
augmented exactly as image files are (`FileSet.batch`: `sample_transform`, then the batch part of
`augment_batch`). Every process takes `steps_per_epoch` batches per epoch, cycling its shards
when they run out, so all processes step together; shards of unequal size are therefore seen at
unequal rates (write shards of equal size). An image that cannot be decoded, or a sample without
an image or label, is skipped and counted (the run summary's `skipped`), never fatal.

Evaluation reads its shards in order, every sample once, split by node and worker; a process
with fewer batches pads with one-image batches labelled -1 (which `evaluate` ignores), so every
process runs the same number of batches.

Resume: a run resumed inside an epoch restarts that epoch's stream and runs its remaining steps,
so the samples of the epoch's first batches are seen again and its last ones are not. Each
epoch's stream depends only on (seed, epoch, rank, worker), so a run resumed at an epoch boundary
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from vitlab.data.images import IMAGE_SUFFIXES, ImageError, decode_image
from vitlab.data.sets import Batch, DatasetError, DataSplits, FileSet, ShardSet, mix_seed
from vitlab.data.transforms import AugConfig

log = logging.getLogger("vitlab")

SHUFFLE_BUFFER = 1000  # samples each DataLoader worker holds to shuffle the training stream
SPLITS = ("train", "val", "test")
CLASS_FILES = ("classes.txt", "classes.json")
# the member suffixes taken as the image, in order of preference
IMAGE_KEYS = tuple(dict.fromkeys(("jpg", "jpeg", "png", "webp", *(s[1:] for s in IMAGE_SUFFIXES))))
SCAN_THREADS = 8
META = r"__[^/]*__($|/)"  # members webdataset skips (__index__, __meta__/...)


def layout(pattern: str) -> str:
    return (
        f"expected WebDataset tar shards matching {pattern} whose samples are KEY.jpg|jpeg|png|webp"
        " + KEY.cls (the integer label as text), e.g. made with webdataset.ShardWriter"
    )


def _webdataset() -> ModuleType:
    try:
        import webdataset
    except ImportError:
        raise DatasetError(
            "--data wds:PATTERN reads WebDataset shards with the webdataset package, which is not "
            "installed; pip install 'vitlab[wds]' (or pip install webdataset)"
        ) from None
    return webdataset


def is_local(url: str) -> bool:
    """A plain path, as opposed to a URL or `pipe:` command webdataset opens."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url) is None


# -------------------------------------------------------------------------------- the splits
def load_shards(pattern: str, val_split: float = 0.0, labelled: bool = True) -> DataSplits:
    """Resolve `wds:PATTERN` (see the module docstring): find and scan the shards of each split.
    `labelled=False` (pre-training without labels) also takes shards of images without
    `KEY.cls`, as one "unlabelled" class."""
    if not pattern:
        raise DatasetError(
            "wds needs a shard pattern: --data 'wds:/data/shards/train-{000000..000127}.tar'"
        )
    _webdataset()
    t0 = time.perf_counter()
    if "{split}" in pattern:
        parts = {
            s: _scan_split(pattern.replace("{split}", s), s == "train", labelled) for s in SPLITS
        }
    else:
        parts = {"train": _scan_split(pattern, True, labelled), "val": None, "test": None}
    if val_split > 0 and parts["val"] is None:
        raise DatasetError(
            f"wds:{pattern} has no validation shards, and val_split does not apply to streamed "
            "data; write val shards and put {split} in the pattern "
            "(e.g. wds:/data/{split}-{000000..000099}.tar), or drop val_split"
        )
    found = {s: p[0] for s, p in parts.items() if p is not None}
    top = max(p[1] for p in parts.values() if p is not None)
    names = class_names(found["train"], top) if labelled else ("unlabelled",)
    log.info(
        "wds:%s: %s; %d classes (scanned in %.1fs)",
        pattern,
        ", ".join(f"{len(s)} {k} samples in {len(s.urls)} shards" for k, s in found.items()),
        len(names),
        time.perf_counter() - t0,
    )
    return DataSplits(
        f"wds:{pattern}",
        found["train"],
        found.get("val"),
        found.get("test"),
        names,
        in_chans=3,
        img_size=0,
        notes={"source": pattern},
    )


def _scan_split(pattern: str, required: bool, labelled: bool = True) -> tuple[ShardSet, int] | None:
    """The split's shards with their sample counts and its largest label; None for an optional
    split (validation, test) without shards."""
    urls = _webdataset().shardlists.expand_urls(pattern)
    missing = {u for u in urls if is_local(u) and not Path(u).is_file()}
    if missing and (required or len(missing) == len(urls)):
        if not required:
            return None
        raise DatasetError(
            f"{pattern}: {len(missing)} of {len(urls)} shards do not exist (first: "
            f"{next(u for u in urls if u in missing)}); " + layout(pattern)
        )
    urls = [u for u in urls if u not in missing]
    with ThreadPoolExecutor(max(1, min(SCAN_THREADS, len(urls)))) as pool:
        tallies = list(pool.map(scan_shard, urls))
    kept = [t for t in tallies if t.samples]
    if not kept:
        if not required and not any(is_local(u) for u in urls):
            log.warning("%s: no readable shards; going on without this split", pattern)
            return None
        seen = sorted(set().union(*(t.suffixes for t in tallies)))
        raise DatasetError(
            f"{pattern}: no samples in {len(urls)} shard(s) (member suffixes found: "
            f"{', '.join(seen) or 'none'}); " + layout(pattern)
        )
    for t in tallies:
        t.check(pattern, labelled)
    urls, sizes = tuple(t.url for t in kept), tuple(t.samples for t in kept)
    shards = ShardSet(pattern, urls, sizes, labelled)
    return shards, max(t.max_label for t in kept)


@dataclass
class Tally:
    """What the scan of one shard found."""

    url: str
    samples: int = 0  # keys, as webdataset groups them (each one batch slot when streamed)
    images: int = 0
    labels: int = 0
    max_label: int = -1
    suffixes: set[str] = field(default_factory=set)

    def add(self, key: str, suffixes: set[str], cls: bytes | None) -> None:
        image = any(s in IMAGE_KEYS for s in suffixes)
        self.suffixes |= {f".{s}" for s in suffixes}
        if cls is not None:
            label = parse_label(cls)
            if label is None:
                raise DatasetError(
                    f"{self.url}: {key}.cls holds {cls[:40]!r}, not a non-negative integer label; "
                    "store class indices in KEY.cls and their names in classes.txt"
                )
            self.labels, self.max_label = self.labels + 1, max(self.max_label, label)
        self.images += int(image)
        self.samples += 1

    def check(self, pattern: str, labelled: bool = True) -> None:
        """A shard with samples but no images, or (`labelled`) no labels, is laid out
        differently."""
        if self.samples and not (self.images and (self.labels or not labelled)):
            what = "no .cls labels" if self.images else "no images"
            found = ", ".join(sorted(self.suffixes))
            raise DatasetError(f"{self.url} has {what} (found {found}); " + layout(pattern))


def parse_label(cls: bytes) -> int | None:
    try:
        label = int(cls.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return label if label >= 0 else None


def scan_shard(url: str) -> Tally:
    """Count the samples of one shard (see the module docstring); damage is a warning."""
    tally = Tally(url)
    members = _local_members(url) if is_local(url) else _stream_members(url)
    try:
        for key, group in itertools.groupby(members, key=lambda m: m[0]):
            group = list(group)
            cls = next((data for _, s, data in group if s == "cls"), None)
            tally.add(key, {s for _, s, _ in group}, cls)
    except DatasetError:
        raise
    except Exception as e:  # a damaged tar, a failed download or pipe
        log.warning("%s: unreadable after %d samples (%s); using those", url, tally.samples, e)
    return tally


def _local_members(path: str) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, suffix, the bytes of a .cls member) of each file in a local tar: headers only."""
    split = _webdataset().tariterators.base_plus_ext
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            key, suffix = split(m.name)
            if not m.isreg() or key is None or re.match(META, m.name):
                continue
            suffix = suffix.lower()
            f = tar.extractfile(m) if suffix == "cls" else None
            yield key, suffix, f.read() if f is not None else None


def _stream_members(url: str) -> Iterator[tuple[str, str, bytes | None]]:
    """The same for a URL or pipe: every byte is read through webdataset."""
    for sample in _samples(url, _raise):
        for suffix, value in sample.items():
            if not suffix.startswith("__"):
                yield sample["__key__"], suffix, value if suffix == "cls" else None


def _raise(exn: Exception) -> bool:
    raise exn


def _warn(exn: Exception) -> bool:
    """webdataset's error handler while streaming: log, go on with the next sample or shard."""
    log.warning("wds: %s; going on with the next sample or shard", exn)
    return True


def _samples(url: str, handler: Callable[[Exception], bool]) -> Iterable[dict]:
    return _webdataset().tariterators.tarfile_samples(iter([{"url": url}]), handler=handler)


def class_names(train: ShardSet, max_label: int) -> tuple[str, ...]:
    """From classes.txt or classes.json next to the first training shard, else "0".."K-1"."""
    first = train.urls[0]
    folder = Path(first).parent if is_local(first) else None
    for name in CLASS_FILES if folder is not None else ():
        path = folder / name
        if path.is_file():
            names = read_class_file(path)
            if max_label >= len(names):
                raise DatasetError(
                    f"{path} names {len(names)} classes, but the shards hold label {max_label}; "
                    "list one name per class index"
                )
            return names
    return tuple(str(i) for i in range(max_label + 1))


def read_class_file(path: Path) -> tuple[str, ...]:
    """classes.txt: a name per line; classes.json: a list of names or {name: index}."""
    text = path.read_text()
    if path.suffix == ".txt":
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path} is not valid JSON ({e})") from None
        if isinstance(data, dict) and sorted(data.values()) == list(range(len(data))):
            data = sorted(data, key=data.__getitem__)
        if not (isinstance(data, list) and all(isinstance(n, str) for n in data)):
            raise DatasetError(f"{path} must hold a list of class names or {{name: index}}")
        names = data
    if not names:
        raise DatasetError(f"{path} names no classes")
    return tuple(names)


# ------------------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class RawSample:
    name: str  # SHARD:KEY, for messages
    image: bytes | None
    label: int | None


def raw_sample(url: str, sample: dict) -> RawSample:
    image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    label = parse_label(sample["cls"]) if "cls" in sample else None
    return RawSample(f"{url}:{sample['__key__']}", image, label)


def _decode(r: RawSample, labelled: bool = True) -> Image.Image:
    if r.image is None:
        raise ImageError(f"{r.name}: no image in this sample (KEY.jpg|jpeg|png|webp)")
    if r.label is None and labelled:
        raise ImageError(f"{r.name}: no usable KEY.cls label")
    return decode_image(r.image, r.name, 3)


def first_images(shards: ShardSet, n: int) -> list[tuple[int, str, Image.Image]]:
    """Up to `n` readable samples of a split as (label, SHARD:KEY, image), read in shard order:
    the first of each class first, then the next ones (for `vitlab inspect --data wds:...`).
    Unreadable samples are skipped with a warning; reading stops after 2n good samples."""

    def readable() -> Iterator[tuple[int, str, Image.Image]]:
        for url in shards.urls:
            for sample in _samples(url, _warn):
                r = raw_sample(url, sample)
                try:
                    yield int(r.label if r.label is not None else -1), r.name, _decode(r)
                except ImageError as e:
                    log.warning("skipping %s", e)

    firsts: dict[int, tuple[int, str, Image.Image]] = {}
    rest = []
    for item in itertools.islice(readable(), 2 * n):
        if item[0] not in firsts and len(firsts) < n:
            firsts[item[0]] = item
        else:
            rest.append(item)
    return ([firsts[c] for c in sorted(firsts)] + rest)[:n]


def shuffled(samples: Iterable, size: int, rng: random.Random) -> Iterator:
    """Shuffle a stream through a buffer of `size`: each arriving sample swaps out a random one."""
    buf: list = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = s
    rng.shuffle(buf)
    yield from buf


class ShardStream(IterableDataset):
    """Batches `(x, y, skipped)` of a `ShardSet` for one process (see the module docstring).

    `batch` is this process's batch size; `workers` must be the DataLoader's `num_workers` (the
    evaluation batches are planned per worker). Training yields `steps_per_epoch` batches per
    epoch (less `skip` after a mid-epoch resume), evaluation every sample once. Give it to
    `vitlab.data.loader.make_loader` without a sampler; `set_epoch` before iterating."""

    def __init__(
        self,
        shards: ShardSet,
        aug: AugConfig,
        batch: int,
        *,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        train: bool = False,
        steps_per_epoch: int = 0,
        workers: int = 0,
        buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        if train and len(shards.urls) < world:
            raise DatasetError(
                f"{shards.pattern}: {len(shards.urls)} training shards cannot be split over "
                f"{world} processes; write at least {world} shards (better {world} x workers)"
            )
        self.shards, self.aug, self.batch, self.rank, self.world = shards, aug, batch, rank, world
        self.seed, self.train, self.steps_per_epoch = seed, train, steps_per_epoch
        self.workers, self.buffer, self.epoch, self.skip = max(1, workers), buffer, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Batches of `epoch`, less its first `skip` (a mid-epoch resume restarts its stream)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        if self.train:
            return self.steps_per_epoch - self.skip
        return max(sum(self._eval_plan(r, self.workers)) for r in range(self.world))

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        w, nw = (0, 1) if info is None else (info.id, info.num_workers)
        return self._train(w, nw) if self.train else self._eval(w, nw)

    def _read(self, indices: Iterable[int]) -> Iterator[RawSample]:
        for i in indices:
            url = self.shards.urls[i]
            for sample in _samples(url, _warn):
                yield raw_sample(url, sample)

    def _batch(self, raw: list[RawSample], seed: int) -> Batch:
        """Decode and augment as image files are: FileSet.batch over these samples."""
        labelled = self.shards.labelled
        labels = torch.tensor([-1 if r.label is None or not labelled else r.label for r in raw])
        files = FileSet(lambda i: _decode(raw[i], labelled), labels.clamp(min=0), None)
        return files.batch(range(len(raw)), self.aug, torch.Generator().manual_seed(seed))

    # ------------------------------------------------------------------------ training
    def _train(self, w: int, nw: int) -> Iterator[Batch]:
        order = list(range(len(self.shards.urls)))
        random.Random(mix_seed(self.seed, self.epoch)).shuffle(order)
        node = order[self.rank :: self.world]  # split by node, then by worker
        mine, active = node[w::nw], min(nw, len(node))
        total = self.steps_per_epoch - self.skip
        quota = total // active + (w < total % active) if mine else 0
        if quota <= 0:
            return
        rng = random.Random(mix_seed(self.seed, self.epoch, self.skip, self.rank, w))
        size = max(1, min(self.buffer, sum(self.shards.sizes[i] for i in mine)))
        samples = self._cycle(mine, size, rng)
        for j in range(quota):
            raw = list(itertools.islice(samples, self.batch))
            yield self._batch(raw, mix_seed(self.seed, self.epoch, self.skip, self.rank, w, j))

    def _cycle(self, indices: list[int], size: int, rng: random.Random) -> Iterator[RawSample]:
        """This worker's shards over and over, each pass shuffled through a buffer of `size`
        (so an epoch that is one pass sees every sample once); shard order reshuffled after the
        first pass."""
        for p in itertools.count():
            n = 0
            order = indices if p == 0 else rng.sample(indices, len(indices))
            for r in shuffled(self._read(order), size, rng):
                n += 1
                yield r
            if n == 0:
                first = self.shards.urls[indices[0]]
                raise DatasetError(
                    f"{self.shards.pattern}: no sample could be read from {len(indices)} "
                    f"shard(s) ({first}, ...), which were readable at start; check the storage"
                )

    # ---------------------------------------------------------------------- evaluation
    def _eval_plan(self, rank: int, nw: int) -> list[int]:
        """Batches each worker of process `rank` makes from its shards."""
        node = list(range(len(self.shards.urls)))[rank :: self.world]
        sizes = self.shards.sizes
        return [math.ceil(sum(sizes[i] for i in node[w::nw]) / self.batch) for w in range(nw)]

    def _eval(self, w: int, nw: int) -> Iterator[Batch]:
        plan = self._eval_plan(self.rank, nw)
        n = plan[w]
        if w == 0:  # pad this process to the batch count of the busiest one
            n += max(sum(self._eval_plan(r, nw)) for r in range(self.world)) - sum(plan)
        node = list(range(len(self.shards.urls)))[self.rank :: self.world]
        samples = self._read(node[w::nw])
        for j in range(n):
            raw = list(itertools.islice(samples, self.batch)) if j < plan[w] else []
            yield self._batch(raw, mix_seed(self.seed, j)) if raw else self._padding()

    def _padding(self) -> Batch:
        size = (1, self.aug.channels, self.aug.img_size, self.aug.img_size)
        return torch.zeros(size, dtype=torch.uint8), torch.full((1,), -1), 0
