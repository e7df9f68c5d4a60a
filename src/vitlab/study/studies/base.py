"""`Study`: what a study module defines (its name, axis, keys and their check, expansion into
points, summary and plot specifics), read by the plan, the report and `vitlab study`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from vitlab.study.curves import Curve
from vitlab.study.points import Plan, Point

# The keys every study preset has; a study adds its own (`Study.keys`).
COMMON_KEYS = ("study", "description", "train", "families", "seeds", "budget")


@dataclass(frozen=True)
class Axis:
    """The x of a study's plot and mean table."""

    key: str  # the results.csv column
    label: str  # the axis label
    scale: Literal["log", "linear"] = "log"


@dataclass(frozen=True)
class Study:
    """One study: all that differs between studies; the plan, the report and `vitlab study`
    read only this. Arms (a study that trains each model from scratch, pre-trained, distilled
    ...) are the points' `variant`s, made by `expand` and listed in `variants`; the keys that
    configure them are the study's `keys`, checked by its `check`. The layers every study
    shares (the convergence budget, the learning-rate grids) are applied to what `expand`
    returns by the plan (`vitlab.study.budget`, `vitlab.study.lr_grid`)."""

    name: str
    description: str  # one paragraph, for `vitlab study --help`
    axis: Axis
    # top-level preset keys of its own, beyond COMMON_KEYS (`sizes`, `protocols`, ...)
    keys: tuple[str, ...]
    # checks its own keys in the preset after --set (COMMON_KEYS are checked already), raising
    # a one-line ConfigError that names the key; it may drop entries set to null
    check: Callable[[dict[str, Any]], None]
    expand: Callable[[Plan], list[Point]]  # the points, in the order they run
    summary: Callable[[list[Curve]], list[str]]  # sentences from the curves (at least one)
    family_keys: tuple[str, ...] = ()  # keys of a family beyond `label` and TrainConfig keys
    reserved: tuple[tuple[str, str], ...] = ()  # TrainConfig keys it sets per point, and why
    # its variants (arms) that have a curve each, in the legend's order: solid, dashed, ...
    variants: tuple[str, ...] = ()
    off_curve: tuple[str, ...] = ()  # variants that are on no curve (a run that feeds others)
    label_points: bool = False  # the plot writes each point's planned x beside it
    # sentences for the report page about what the plan's arms see (none by default)
    notes: Callable[[Plan], list[str]] = lambda plan: []

    @property
    def all_keys(self) -> tuple[str, ...]:
        return COMMON_KEYS + self.keys
