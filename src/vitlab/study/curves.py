"""`Curve`: one line of a study's plot, as the report computes it from the points' rows and the
studies' summaries read it; and how numbers are written in the summary sentences."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Curve:
    """One line of a plot: a family (and, where the study has them, a protocol and a variant)."""

    label: str
    protocol: str
    variant: str
    xs: list[float]
    means: list[float]  # test top-1, in percent
    spreads: list[float]  # sample standard deviation over seeds (0 for one seed)
    counts: list[int]
    names: list[str]  # the planned x of each point (a size, k, or a model's name)


def pct(v: float) -> str:
    return f"{v:.1f}%"


def num(x: float) -> str:
    """A count as the summary writes it: 4,000, or 3 significant digits below 10."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"
