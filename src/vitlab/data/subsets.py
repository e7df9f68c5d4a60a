"""Parts of a dataset: some of its classes, and class-balanced subsets of its training images.

The experiments of the paper's sections 4.2-4.3 train on subsets of one dataset (Figure 3, 4) and
transfer to classes the pre-training never saw; `vitlab study` builds its points from these two
operations, through the TrainConfig keys `classes`, `train_images` and `train_per_class`.

A subset is drawn class by class from one seeded permutation per class, so for the same seed the
1,000-image subset is part of the 2,500-image one: a curve over sizes adds images, it does not
redraw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from vitlab.data.sets import DatasetError, DataSplits, ImageSet, ShardSet


def class_indices(names: Sequence[str], wanted: Sequence[str | int]) -> list[int]:
    """The indices of `wanted` classes, each given by name or by index into `names`."""
    out = []
    for w in wanted:
        if isinstance(w, str) and w in names:
            i = list(names).index(w)
        elif isinstance(w, int) or (isinstance(w, str) and w.lstrip("-").isdigit()):
            i = int(w)
            if not 0 <= i < len(names):
                raise DatasetError(
                    f"classes: index {i} is out of range; the dataset has {len(names)} classes "
                    f"(0-{len(names) - 1})"
                )
        else:
            raise DatasetError(
                f"classes: no class named {w!r}; the classes are {', '.join(names)} (names or "
                "indices)"
            )
        if i in out:
            raise DatasetError(f"classes: {names[i]!r} is named twice")
        out.append(i)
    return out


def select_classes(data: DataSplits, wanted: Sequence[str | int]) -> DataSplits:
    """Only the `wanted` classes of every split, relabelled 0..k-1 in the order given."""
    keep = class_indices(data.class_names, wanted)
    mapping = torch.full((len(data.class_names),), -1, dtype=torch.long)
    mapping[keep] = torch.arange(len(keep))
    parts = {}
    for split in ("train", "val", "test"):
        images = getattr(data, split)
        if isinstance(images, ShardSet):
            raise DatasetError(
                "classes= needs images that can be indexed (a dataset in memory or image files), "
                f"not WebDataset shards ({images.pattern}); write shards of those classes instead"
            )
        if images is not None:
            members = (mapping[images.targets] >= 0).nonzero().flatten()
            images = images.subset(members).relabel(mapping)
        parts[split] = images
    names = tuple(data.class_names[i] for i in keep)
    return replace(data, **parts, class_names=names)


def balanced_subset(
    images: ImageSet | ShardSet,
    seed: int,
    *,
    total: int | None = None,
    per_class: int | None = None,
    names: Sequence[str] = (),
) -> ImageSet:
    """A class-balanced subset of `images`: `per_class` images of every class, or `total` in
    all, shared as equally as the classes allow (the first classes get one more when `total`
    does not divide). Members are taken from one seeded permutation per class (see the module
    docstring); too few images is a DatasetError naming the class."""
    if isinstance(images, ShardSet):
        raise DatasetError(
            "train_images and train_per_class need images that can be indexed (a dataset in "
            f"memory or image files), not WebDataset shards ({images.pattern})"
        )
    labels = images.targets
    classes = labels.unique().tolist()
    counts = {c: int((labels == c).sum()) for c in classes}
    if per_class is not None:
        want = dict.fromkeys(classes, per_class)
    else:
        if total is None:
            raise ValueError("balanced_subset needs total or per_class")
        if total > len(labels):
            raise DatasetError(
                f"train_images={total} is more than the {len(labels)} training images there "
                "are (after the validation hold-out); choose at most that many"
            )
        want = _shares(total, counts)
    for c in classes:
        if want[c] > counts[c]:
            name = names[c] if c < len(names) else str(c)
            raise DatasetError(
                f"train_per_class={want[c]}: class {name!r} has only {counts[c]} training images "
                f"(after the validation hold-out); choose at most {min(counts.values())}"
            )
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)][: want[c]])
    return images.subset(torch.cat(chosen).sort().values)


def _shares(total: int, counts: dict[int, int]) -> dict[int, int]:
    """`total` images shared as equally as the classes' `counts` allow: a class with fewer
    than its share gives all it has and the others share the rest; where the share does not
    divide, the first classes (by label) take one more."""
    want, left = dict.fromkeys(counts, 0), total
    open_ = sorted(counts, key=lambda c: (counts[c], c))  # the smallest class first
    while left and open_:
        share, extra = divmod(left, len(open_))
        if counts[open_[0]] <= share:
            c = open_.pop(0)
            want[c], left = counts[c], left - counts[c]
            continue
        for i, c in enumerate(sorted(open_)):
            want[c] = share + (i < extra)
        left = 0
    return want
