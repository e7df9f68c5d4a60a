"""What every study is made of: `Point` (one training run and its place in the report), `Plan`
(a study's points and the preset they came from), and the config layering the studies expand
their presets with. Generic: nothing here knows one study from another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitlab.train.config import merge

ALL = "all"  # an axis value: every image (data-scaling) or every image of a class (transfer)


@dataclass
class Point:
    """One training run of a study and where it sits in the report."""

    id: str  # also its run directory under OUT/points/
    family: str
    label: str  # the family's name in the report
    seed: int
    x: int | str  # the planned x: a size or k (an int or "all"), or a model's name
    config: dict[str, Any]  # the TrainConfig, resolved
    variant: str = ""  # the arm of a study that has several (transfer: "pretrained", "scratch";
    # "pretrain" for a run that only feeds others; "mae", "mpp": the arm pre-trained without
    # labels; "lr-grid": a learning-rate grid point)
    protocol: str = ""  # a study's sub-experiment, one plot each (transfer: the protocol's name)
    needs: tuple[str, ...] = ()  # ids of the points that must finish before this one starts
    # ids of the learning-rate grid points it takes its rate from (`vitlab.study.lr_grid`)
    lr_from: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        return Path(self.config["out"])

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("id", "family", "label", "seed", "x", "variant")}
        d.update(protocol=self.protocol, needs=list(self.needs), lr_from=list(self.lr_from))
        d.update(config=self.config)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        return cls(
            **{**d, "needs": tuple(d.get("needs", ())), "lr_from": tuple(d.get("lr_from", ()))}
        )


@dataclass
class Plan:
    study: str
    preset: str
    out: Path
    spec: dict[str, Any]  # the preset after --set
    points: list[Point] = field(default_factory=list)

    def families(self) -> dict[str, str]:
        """Family name -> label, in the preset's order (the first is the reference)."""
        return {k: family_label(k, v) for k, v in self.spec["families"].items()}

    def seeds(self) -> list[int]:
        return list(self.spec.get("seeds", [0]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "preset": self.preset,
            "spec": self.spec,
            "points": [p.to_dict() for p in self.points],
        }


def family_label(name: str, family: dict[str, Any]) -> str:
    """A family's name in the report: its `label`, else its key."""
    return str(family.get("label", name))


# a family's keys that are not TrainConfig keys: its report label, its learning-rate grid
# (`vitlab.study.lr_grid`), and the keys some studies add (`Study.family_keys`)
FAMILY_KEYS = ("label", "lr_grid")


def family_keys(family: dict[str, Any]) -> dict[str, Any]:
    """A family's TrainConfig keys (without its label, grid, models or arms' keys)."""
    skip = (*FAMILY_KEYS, "models", "self_supervised", "distilled")  # the arms' keys
    return {k: v for k, v in family.items() if k not in skip}


def point_config(
    plan: Plan, *layers: dict[str, Any] | None, run_id: str, seed: int
) -> dict[str, Any]:
    """A point's TrainConfig keys: the preset's `train`, then `layers` in order, then the `--set`
    keys for every point; its seed and its run directory under OUT/points/ last."""
    cfg: dict[str, Any] = {}
    for layer in (plan.spec.get("train"), *layers, plan.spec.get("everywhere")):
        cfg = merge(cfg, layer or {})
    cfg.update(seed=seed, out=str(plan.out / "points" / run_id))
    return cfg
