"""data-scaling: model families trained on class-balanced subsets of growing size, test top-1
against training images (the paper's sections 4.2-4.3, Figures 3 and 4).

Its own preset key: `sizes` (training images per point: whole numbers, or `all`). Each size
becomes the points' `train_images`.
"""

from __future__ import annotations

import math
from typing import Any

from vitlab.study.curves import Curve, num, pct
from vitlab.study.keys import check_axis
from vitlab.study.points import ALL, Plan, Point, family_keys, family_label, point_config
from vitlab.study.studies.base import Axis, Study

DESCRIPTION = (
    "ViT, BiT ResNet and a hybrid trained on class-balanced subsets of growing size, each for "
    "the same number of optimiser steps, the checkpoint of best validation accuracy tested on "
    "the full test set (Figures 3 and 4, small)"
)


def check(spec: dict[str, Any]) -> None:
    check_axis("sizes", spec.get("sizes"))


def expand(plan: Plan) -> list[Point]:
    """One point per family, size and seed."""
    points = []
    for fam, keys in plan.spec["families"].items():
        for size in plan.spec["sizes"]:
            for seed in plan.seeds():
                pid = f"{fam}-n{size}-s{seed}"
                axis = {"train_images": None if size == ALL else size}
                cfg = point_config(plan, family_keys(keys), axis, run_id=pid, seed=seed)
                points.append(Point(pid, fam, family_label(fam, keys), seed, size, cfg))
    return points


# ------------------------------------------------------------------------------ the summary
def summary(cs: list[Curve]) -> list[str]:
    """Each family against the first at the smallest and largest size, where the curves
    cross; then each family's gain from the smallest to the largest size."""
    ref, lines = cs[0], []
    for other in cs[1:]:
        common = [x for x in other.names if x in ref.names]
        if not common:
            continue
        ia = [other.names.index(x) for x in common]
        ib = [ref.names.index(x) for x in common]
        lo, hi = ref.xs[ib[0]], ref.xs[ib[-1]]
        text = lead(other, ref, ia[0], ib[0], f"{num(lo)} images")
        if len(common) > 1:
            text += "; " + lead(other, ref, ia[-1], ib[-1], f"{num(hi)} images")
        diffs = [other.means[i] - ref.means[j] for i, j in zip(ia, ib)]
        x = crossing([ref.xs[j] for j in ib], diffs)
        if x is not None:
            text += f". The curves cross at about {num(x)} training images"
        elif len(common) > 1:
            ahead = other.label if diffs[0] > 0 else ref.label
            text += (
                f". The curves do not cross between {num(lo)} and {num(hi)} images ({ahead} ahead)"
            )
        lines.append(text[0].upper() + text[1:] + ".")
    for c in cs:
        lines.append(
            f"{c.label}: {pct(c.means[0])} with {num(c.xs[0])} images, {pct(c.means[-1])} "
            f"with {num(c.xs[-1])} ({c.means[-1] - c.means[0]:+.1f} points)."
        )
    return lines


def lead(a: Curve, b: Curve, i: int, j: int, what: str) -> str:
    """Which of `a` (its i-th point) and `b` (its j-th) is ahead, by how much, and whether
    that is within the seeds' spread."""
    d = a.means[i] - b.means[j]
    spread = max(a.spreads[i], b.spreads[j])
    first, second = (a, b) if d >= 0 else (b, a)
    noise = f" (within the seed spread of {spread:.1f})" if abs(d) <= spread and spread else ""
    if round(abs(d), 1) == 0:
        return f"at {what} {a.label} and {b.label} are level ({pct(a.means[i])}){noise}"
    return (
        f"at {what} {first.label} leads {second.label} by {abs(d):.1f} points "
        f"({pct(max(a.means[i], b.means[j]))} vs {pct(min(a.means[i], b.means[j]))}){noise}"
    )


def crossing(xs: list[float], diffs: list[float]) -> float | None:
    """The first x where `diffs` changes sign, interpolated linearly in log x."""
    for i in range(len(diffs) - 1):
        d0, d1 = diffs[i], diffs[i + 1]
        if d0 * d1 < 0:
            t = d0 / (d0 - d1)
            return math.exp(math.log(xs[i]) + t * (math.log(xs[i + 1]) - math.log(xs[i])))
    return None


STUDY = Study(
    name="data-scaling",
    description=DESCRIPTION,
    axis=Axis("train_images", "training images"),
    keys=("sizes",),
    check=check,
    expand=expand,
    summary=summary,
    reserved=(("train_images", "each point's training images come from `sizes`"),),
)
