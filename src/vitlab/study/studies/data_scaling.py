"""data-scaling: model families trained on class-balanced subsets of growing size, test top-1
against training images (the paper's sections 4.2-4.3, Figures 3 and 4).

Its own preset keys: `sizes` (training images per point: whole numbers, or `all`; each size
becomes the points' `train_images`) and `finetune` (TrainConfig keys of the points that start
from a pre-training without labels).

A family with `self_supervised` (`vitlab.study.unlabelled`) adds the arm "pre-trained without
labels": per objective and seed one pre-training on every training image (the validation images
held out as for every point), then per size a point that fine-tunes it on that size's labelled
subset. A family with `distilled` (`vitlab.study.distilled`) adds the arm "distilled from a
CNN": per size and seed a point with a teacher, another family's point of that size and seed
(DeiT). The convergence budget and the learning-rate grids are the study layers every study
shares (`vitlab.study.budget`, `vitlab.study.lr_grid`).
"""

from __future__ import annotations

import math
from typing import Any

from vitlab.study import budget, distilled, unlabelled
from vitlab.study.curves import Curve, no_difference, num, pct, versus
from vitlab.study.keys import check_axis, check_train_keys
from vitlab.study.points import ALL, Plan, Point, family_keys, family_label, point_config
from vitlab.study.studies.base import Axis, Study

DESCRIPTION = (
    "ViT, BiT ResNet and a hybrid trained on class-balanced subsets of growing size until "
    "validation accuracy stops improving, a ViT pre-trained without labels on every training "
    "image then fine-tuned on each subset, and a ViT distilled from the ResNet of its subset; "
    "the best-validation checkpoint tested on the full test set (Figures 3 and 4, small)"
)
RESERVED = {"train_images": "each point's training images come from `sizes`"}
FINETUNE_RESERVED = {
    **RESERVED,
    "init_from": "the fine-tuning points start from their pre-training without labels",
}


def check(spec: dict[str, Any]) -> None:
    check_axis("sizes", spec.get("sizes"))
    reserved = {**FINETUNE_RESERVED, **budget.reserved(spec)}
    check_train_keys("finetune", spec.get("finetune", {}), reserved)
    for fam, keys in spec["families"].items():
        if keys.get(unlabelled.KEY) is not None:  # null: no such arm
            unlabelled.check_arm(f"families.{fam}.{unlabelled.KEY}", keys[unlabelled.KEY])
        if keys.get(distilled.KEY) is not None:
            where = f"families.{fam}.{distilled.KEY}"
            distilled.check_arm(where, keys[distilled.KEY], spec["families"], fam)


def expand(plan: Plan) -> list[Point]:
    """Per family: one point per size and seed; then per objective of its arm without labels
    and per seed, the pre-training and one fine-tuning point per size. Last, per family with
    a distilled arm, one point per size and seed, after its teacher point."""
    points, plain = [], {}
    for fam, keys in plan.spec["families"].items():
        label = family_label(fam, keys)
        for size in plan.spec["sizes"]:
            for seed in plan.seeds():
                pid = f"{fam}-n{size}-s{seed}"
                cfg = point_config(plan, family_keys(keys), _axis(size), run_id=pid, seed=seed)
                plain[fam, size, seed] = Point(pid, fam, label, seed, size, cfg)
                points.append(plain[fam, size, seed])
        for obj in unlabelled.arms(keys):
            for seed in plan.seeds():
                pid = f"{fam}-{obj}-pretrain-s{seed}"
                pre = unlabelled.pretrain_point(plan, fam, keys, obj, seed, data=None, pid=pid)
                points.append(pre)
                points += _finetune_points(plan, fam, keys, obj, seed, pre)
    for fam, keys in plan.spec["families"].items():
        if src := distilled.teacher_of(keys):
            for (f, size, seed), teacher in plain.items():
                if f == src:
                    pid = f"{fam}-{distilled.VARIANT}-n{size}-s{seed}"
                    points.append(distilled.arm_point(plan, fam, keys, teacher, _axis(size), pid))
    return points


def _axis(size: int | str) -> dict[str, Any]:
    return {"train_images": None if size == ALL else size}


def _finetune_points(
    plan: Plan, fam: str, keys: dict[str, Any], obj: str, seed: int, pre: Point
) -> list[Point]:
    points = []
    start = unlabelled.start_from(pre)
    for size in plan.spec["sizes"]:
        pid = f"{fam}-{obj}-n{size}-s{seed}"
        layers = [family_keys(keys), plan.spec.get("finetune"), start, _axis(size)]
        cfg = point_config(plan, *layers, run_id=pid, seed=seed)
        label = family_label(fam, keys)
        points.append(Point(pid, fam, label, seed, size, cfg, obj, needs=(pre.id,)))
    return points


def notes(plan: Plan) -> list[str]:
    return unlabelled.arm_note(
        plan,
        "labels only from each point's subset, and images from the whole training set: its "
        "pre-training uses every training image without its label (the validation images held "
        "out, as for every point)",
    ) + distilled.arm_note(plan)


# ------------------------------------------------------------------------------ the summary
def summary(cs: list[Curve]) -> list[str]:
    """Each curve against the first at the smallest and largest size, where the curves cross,
    and each arm without labels against the other families; then each curve's gain from the
    smallest to the largest size."""
    ref, lines = cs[0], []
    pairs = [(other, ref) for other in cs[1:]]
    pairs += [(a, b) for a in cs if a.variant for b in cs if not b.variant and b.label != a.label]
    for a, b in pairs:
        if text := compare(a, b):
            lines.append(text[0].upper() + text[1:] + ".")
    for c in cs:
        lines.append(
            f"{c.name}: {pct(c.means[0])} with {num(c.xs[0])} images, {pct(c.means[-1])} "
            f"with {num(c.xs[-1])} ({c.means[-1] - c.means[0]:+.1f} points)."
        )
    return lines


def compare(other: Curve, ref: Curve) -> str:
    """`other` against `ref` at the sizes both have: the ends, and where they cross."""
    common = [x for x in other.names if x in ref.names]
    if not common:
        return ""
    ia = [other.names.index(x) for x in common]
    ib = [ref.names.index(x) for x in common]
    lo, hi = ref.xs[ib[0]], ref.xs[ib[-1]]
    text = lead(other, ref, ia[0], ib[0], f"{num(lo)} images")
    if len(common) > 1:
        text += "; " + lead(other, ref, ia[-1], ib[-1], f"{num(hi)} images")
    diffs = [differ(other, ref, i, j) for i, j in zip(ia, ib)]
    x = crossing([ref.xs[j] for j in ib], diffs)
    if x is not None:
        text += f". The curves cross at about {num(x)} training images"
    elif len(common) > 1 and any(diffs):
        ahead = other.name if next(d for d in diffs if d) > 0 else ref.name
        text += f". The curves do not cross between {num(lo)} and {num(hi)} images ({ahead} ahead)"
    elif len(common) > 1:
        text += f". They show no difference at any size from {num(lo)} to {num(hi)} images"
    return text


def differ(a: Curve, b: Curve, i: int, j: int) -> float:
    """`a`'s i-th mean less `b`'s j-th, or 0 where that is no difference (`no_difference`)."""
    d = a.means[i] - b.means[j]
    return 0.0 if no_difference(d, max(a.spreads[i], b.spreads[j])) else d


def lead(a: Curve, b: Curve, i: int, j: int, what: str) -> str:
    """Which of `a` (its i-th point) and `b` (its j-th) is ahead and by how much, or that the
    difference is within the seeds' spread (no difference)."""
    spread = max(a.spreads[i], b.spreads[j])
    return versus(a.name, a.means[i], b.name, b.means[j], spread, what)


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
    keys=("sizes", "finetune"),
    check=check,
    expand=expand,
    summary=summary,
    family_keys=(unlabelled.KEY, distilled.KEY),
    reserved=tuple(RESERVED.items()),
    variants=("", *unlabelled.VARIANTS, distilled.VARIANT),
    off_curve=unlabelled.OFF_CURVE,
    notes=notes,
)
