"""model-scaling: models of growing size on one data set, each trained until its validation
accuracy stops improving, test top-1 against training compute (the paper's Figure 5).

Its own key is in each family: `models`, model name -> the TrainConfig keys that size it (e.g.
`{d64: {model_args: {embed_dim: 64}}}`; `{}` or null: the family's model as it is). The
convergence budget and the learning-rate grids are the study layers every study shares
(`vitlab.study.budget`, `vitlab.study.lr_grid`); a family's `lr_grid` without `at` chooses a
rate for each model (the paper's Table 3 lowers it as ViTs grow).
"""

from __future__ import annotations

import math
from typing import Any

from vitlab.errors import ConfigError
from vitlab.study import budget, lr_grid
from vitlab.study.curves import Curve, pct, versus
from vitlab.study.keys import check_name, check_train_keys
from vitlab.study.points import Plan, Point, family_keys, family_label, point_config
from vitlab.study.studies.base import Axis, Study

DESCRIPTION = (
    "ViTs and ResNets of growing size on one data set, each trained until its validation "
    "accuracy stops improving, test accuracy against training compute (Figure 5, small)"
)


def check(spec: dict[str, Any]) -> None:
    for fam, keys in spec["families"].items():
        models = keys.get("models")
        if not isinstance(models, dict) or not models:
            raise ConfigError(
                f"model-scaling: families.{fam}.models must map each model's name to the keys "
                "that size it, e.g. {d64: {model_args: {embed_dim: 64}}}"
            )
        reserved = budget.reserved(spec)
        if keys.get(lr_grid.KEY) is not None:
            reserved.update(lr_grid.reserved(f"families.{fam}"))
        for name, sizing in models.items():
            check_name(f"families.{fam}.models", name)
            check_train_keys(f"families.{fam}.models.{name}", sizing or {}, reserved)


def expand(plan: Plan) -> list[Point]:
    """One point per family, model and seed."""
    points = []
    for fam, keys in plan.spec["families"].items():
        for name, sizing in keys["models"].items():
            for seed in plan.seeds():
                pid = f"{fam}-{name}-s{seed}"
                cfg = point_config(plan, family_keys(keys), sizing, run_id=pid, seed=seed)
                points.append(Point(pid, fam, family_label(fam, keys), seed, name, cfg))
    return points


def summary(cs: list[Curve]) -> list[str]:
    """Each family's range and best model; each against the first at equal compute (a
    difference within the seeds' spread is none)."""
    lines = []
    for c in cs:
        best = max(range(len(c.means)), key=c.means.__getitem__)
        lines.append(
            f"{c.name}: {pct(c.means[0])} at {c.xs[0]:.3g} PFLOPs ({c.names[0]}) to "
            f"{pct(c.means[-1])} at {c.xs[-1]:.3g} PFLOPs ({c.names[-1]}); best "
            f"{pct(c.means[best])} ({c.names[best]})."
        )
    ref = cs[0]
    for other in cs[1:]:
        lo, hi = max(ref.xs[0], other.xs[0]), min(ref.xs[-1], other.xs[-1])
        if lo > hi or len(ref.xs) < 2 or len(other.xs) < 2:
            lines.append(
                f"{other.name} and {ref.name} were trained at compute budgets that do not "
                "overlap, so they are not compared at equal compute."
            )
            continue
        x = math.sqrt(lo * hi)
        a, b = interp(other, x), interp(ref, x)
        spread = max(interp(other, x, other.spreads), interp(ref, x, ref.spreads))
        text = versus(other.name, a, ref.name, b, spread, f"about {x:.3g} PFLOPs")
        lines.append(
            text[0].upper() + text[1:] + " (the middle of the range where both were trained, "
            "interpolated in log compute)."
        )
    return lines


def interp(c: Curve, x: float, values: list[float] | None = None) -> float:
    """The curve's mean (or `values`, one per point) at `x`, interpolated linearly in log x
    (its ends outside its range)."""
    ys = c.means if values is None else values
    for i in range(len(c.xs) - 1):
        x0, x1 = c.xs[i], c.xs[i + 1]
        if x0 <= x <= x1:
            t = 0.0 if x1 == x0 else (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return ys[i] + t * (ys[i + 1] - ys[i])
    return ys[0] if x < c.xs[0] else ys[-1]


STUDY = Study(
    name="model-scaling",
    description=DESCRIPTION,
    axis=Axis("train_pflops", "training compute (PFLOPs: 3 x forward x images seen)"),
    keys=(),
    check=check,
    expand=expand,
    summary=summary,
    family_keys=("models",),
    label_points=True,
)
