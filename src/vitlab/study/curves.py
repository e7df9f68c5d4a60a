"""`Curve`: one line of a study's plot, as the report computes it from the points' rows and the
studies' summaries read it; how numbers are written in the summary sentences; and the one rule
every summary compares two means by (a difference no larger than the seeds' spread is none)."""

from __future__ import annotations

from dataclasses import dataclass, field

# how the report names a variant (arm) whose name is not plain words
VARIANT_TEXT = {
    "mae": "pre-trained without labels, MAE",
    "mpp": "pre-trained without labels, MPP",
    "distilled": "distilled, DeiT",
}


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
    capped: list[int] = field(default_factory=list)  # seeds that stopped at the step cap

    @property
    def name(self) -> str:
        """The curve in a legend or a sentence: its family, and its arm where it has one."""
        v = VARIANT_TEXT.get(self.variant, self.variant)
        return self.label + (f" ({v})" if v else "")


def pct(v: float) -> str:
    return f"{v:.1f}%"


def num(x: float) -> str:
    """A count as the summary writes it: 4,000, or 3 significant digits below 10."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def no_difference(d: float, spread: float) -> bool:
    """A difference of means `d` is none when it is no larger than the seeds' spread (the larger
    of the two sample standard deviations), or when it rounds to 0.0 points."""
    return round(abs(d), 1) == 0 or (spread > 0 and abs(d) <= spread)


def versus(a: str, ma: float, b: str, mb: float, spread: float, what: str) -> str:
    """`a` (mean `ma`) against `b` (mean `mb`) at `what`: who leads and by how much, or that
    they show no difference (`no_difference`)."""
    d = ma - mb
    if no_difference(d, spread):
        within = f", within the seed spread of {spread:.1f}" if spread > 0 else ""
        return f"at {what} {a} and {b} show no difference ({pct(ma)} vs {pct(mb)}{within})"
    first, second = (a, b) if d > 0 else (b, a)
    return (
        f"at {what} {first} leads {second} by {abs(d):.1f} points "
        f"({pct(max(ma, mb))} vs {pct(min(ma, mb))})"
    )
