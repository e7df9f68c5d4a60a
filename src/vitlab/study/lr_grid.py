"""The learning rate per family, chosen on validation accuracy from a small grid in the preset
(the paper's protocol: its Table 3 lowers the rate as ViTs grow; at one rate for all sizes
vitlab's own model-scaling study misordered them). One layer for every study, from a family key:

    families:
      vit:
        lr_grid: {lr: [1.0e-3, 3.0e-3], at: [3000]}

For each curve of the family (each arm, and in transfer each protocol), one grid point per
learning rate (variant `lr-grid`, on no curve) trains at each reference value of the axis in
`at` (a size, k, or a model's name; without `at`, every value of the axis is its own reference),
with the first seed and the budget of the point it copies. Every point of that curve then
trains with the rate whose grid point at the nearest reference (in the axis' order; a tie goes
to the earlier) had the best validation accuracy (`best.val_acc` in its report.json; a tie goes
to the earlier rate in the grid).

"Per size where it matters": several references give each range of the axis its own rate, at
the price of a grid per reference; one reference is the cheap default for a family whose best
rate does not move with the data. The plan is written before anything trains, so the choice is
made at run time: a point `needs` its grid points, and `resolved_config` puts the chosen rate
into its point.yaml just before it runs (study.yaml keeps the preset's rate, so the plan stays
comparable across reruns). A family without `lr_grid` (or with `lr_grid: null`) keeps its fixed
rate; one with a grid may not set `lr` itself (nor its models, in model-scaling).
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from vitlab.errors import ConfigError
from vitlab.study.keys import check_mapping
from vitlab.study.points import Plan, Point

GRID = "lr-grid"  # the variant of a grid point
KEY = "lr_grid"  # the family key


# ------------------------------------------------------------------------------ the key
def check_grid(where: str, value: Any) -> None:
    """`lr` is a list of at least two distinct positive rates; `at`, if given, a non-empty list
    of axis values (checked against the axis when the plan is expanded)."""
    hint = "e.g. {lr: [1.0e-3, 3.0e-3], at: [3000]}"
    grid = check_mapping(where, value, "lr and at", hint)
    for key in grid:
        if key not in ("lr", "at"):
            raise ConfigError(f"{where}.{key}: a learning-rate grid takes lr and at ({hint})")
    rates = grid.get("lr")
    ok = isinstance(rates, list) and len(rates) >= 2 and len(set(map(repr, rates))) == len(rates)
    if not ok or not all(_rate(r) for r in rates):
        raise ConfigError(
            f"{where}.lr must list at least two different learning rates > 0, got {rates!r}"
        )
    at = grid.get("at", [])
    if not isinstance(at, list) or ("at" in grid and not at) or len(set(map(repr, at))) < len(at):
        raise ConfigError(f"{where}.at must be a list of axis values, each once, got {at!r}")


def reserved(family: str) -> dict[str, str]:
    """The TrainConfig key a family with a grid may not set (the grid chooses it), and why."""
    return {"lr": f"{family}.{KEY} chooses its rate (set {family}.{KEY}=null for a fixed one)"}


def _rate(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


# ------------------------------------------------------------------------------ the points
def add_grids(plan: Plan, points: list[Point], off_curve: tuple[str, ...]) -> list[Point]:
    """`points` with the grid points of every family that has an `lr_grid` in front, and each
    curve point of those families made to need and choose from its nearest grid."""
    curves: dict[tuple[str, str, str], list[Point]] = defaultdict(list)
    for p in points:
        if p.variant not in off_curve:
            curves[(p.protocol, p.family, p.variant)].append(p)
    grid_points: list[Point] = []
    for (_, fam, _), members in curves.items():
        grid = plan.spec["families"][fam].get(KEY)
        if grid:
            grid_points += _grid_for_curve(plan, fam, grid, members)
    return grid_points + points


def _grid_for_curve(plan: Plan, fam: str, grid: dict, members: list[Point]) -> list[Point]:
    xs = list(dict.fromkeys(p.x for p in members))  # the curve's axis values, in order
    at = grid.get("at") or xs
    for a in at:
        if a not in xs:
            raise ConfigError(
                f"families.{fam}.{KEY}.at: {a!r} is not a point of its curve "
                f"({', '.join(map(str, xs))})"
            )
    first = plan.seeds()[0]
    refs = {}
    for a in at:
        base = next(p for p in members if p.x == a and p.seed == first)
        refs[a] = [_grid_point(plan, base, lr) for lr in grid["lr"]]
    for p in members:
        near = min(at, key=lambda a: abs(xs.index(a) - xs.index(p.x)))  # first of a tie
        p.lr_from = tuple(g.id for g in refs[near])
        p.needs = (*p.needs, *p.lr_from)
    return [g for gs in refs.values() for g in gs]


def _grid_point(plan: Plan, base: Point, lr: float) -> Point:
    pid = f"{GRID}/{base.id}-lr{lr:g}"
    cfg = copy.deepcopy(base.config)
    cfg.update(lr=lr, out=str(plan.out / "points" / pid))
    return Point(
        pid, base.family, base.label, base.seed, base.x, cfg, GRID, base.protocol, base.needs
    )


# ------------------------------------------------------------------------------ the choice
def val_acc(p: Point) -> float | None:
    """A finished point's best validation accuracy (-1 if it has none), None if unfinished."""
    from vitlab.train.state import RUN_FILES  # torch: not for `vitlab study --help`

    path = p.run_dir / RUN_FILES["report"]
    if not path.is_file():
        return None
    best = json.loads(path.read_text()).get("best") or {}
    return best.get("val_acc", -1.0)


def chosen(plan: Plan, p: Point) -> Point | None:
    """The grid point whose rate `p` trains with, None until its whole grid has finished."""
    if not p.lr_from:
        return None
    by_id = {q.id: q for q in plan.points}
    grid = [by_id[i] for i in p.lr_from]
    scores = [val_acc(g) for g in grid]
    if any(s is None for s in scores):
        return None
    return grid[max(range(len(grid)), key=lambda i: (scores[i], -i))]


def resolved_config(plan: Plan, p: Point) -> dict[str, Any]:
    """The config `p` runs with: its planned one, with the rate its grid chose once known."""
    best = chosen(plan, p)
    return p.config if best is None else {**p.config, "lr": best.config["lr"]}


@dataclass
class GridRow:
    """One grid point in the report's learning-rate table."""

    curve: str  # protocol / family label / arm
    x: str  # the reference
    lr: float
    val_acc: float | None  # None: not finished
    chosen: bool


def grid_rows(plan: Plan) -> list[GridRow]:
    """Every grid point, grouped as its curve uses it, and which rate each grid chose."""
    rows, seen = [], set()
    for p in plan.points:
        if not p.lr_from or p.lr_from in seen:
            continue
        seen.add(p.lr_from)
        best = chosen(plan, p)
        curve = " / ".join(s for s in (p.protocol, p.label, p.variant) if s)
        for q in (q for q in plan.points if q.id in p.lr_from):
            acc = val_acc(q)
            rows.append(GridRow(curve, str(q.x), q.config["lr"], acc, q is best))
    return rows


def grid_lines(plan: Plan) -> list[str]:
    """The grid as console lines: per curve and reference, each rate's validation accuracy and
    the choice (for `vitlab study --collect`)."""
    groups: dict[tuple[str, str], list[GridRow]] = defaultdict(list)
    for r in grid_rows(plan):
        groups[(r.curve, r.x)].append(r)
    lines = []
    for (curve, x), rs in groups.items():
        cells = ", ".join(
            f"{r.lr:g} ({'not run' if r.val_acc is None else f'{100 * r.val_acc:.2f}%'})"
            + (" <- chosen" if r.chosen else "")
            for r in rs
        )
        lines.append(f"learning rate of {curve} (grid at {x}, validation accuracy): {cells}")
    return lines
