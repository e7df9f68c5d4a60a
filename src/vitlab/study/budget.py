"""The convergence budget: every supervised point of a study trains until its validation accuracy
stops improving (TrainConfig `patience`), under a step cap set high enough that no point should
reach it. One layer for every study, from the preset's common `budget` key:

    budget: {patience: 5, min_epoch_steps: 50, max_epochs: 100, min_steps: 2000, cooldown: 0.25}

A point's validation pass comes every `epoch_steps` = one pass over its own training images
(images // batch_size), but at least `min_epoch_steps`; its cap is `max_epochs` such passes, but
at least `min_steps`. So a 1,000-image subset (8 steps of 128 a pass) validates every 50 steps
and stops before it overfits, and the 57,000 images (445 steps a pass) are not cut short. A point
that reaches its cap is reported as not converged (`stopped: cap` in its report.json).

`cooldown` (TrainConfig `cooldown`): once validation has stalled for `patience` passes, the
learning rate falls linearly to its floor over that fraction of the steps trained so far, and
the point stops then (warmup-stable-decay). Without it a point stops at whatever rate its
schedule had reached, which for a schedule spread over the cap is near the peak: the first
converged model-scaling run stopped its ViTs after 1,000-4,000 of 7,500 steps, unannealed, and
ordered them by where they happened to stop.

Without a `budget` key (or `budget: null`) each point trains for the steps or epochs the preset
gives it, as before. A pre-training without labels (objective mpp or mae) has no validation
accuracy: it keeps the budget its own keys give it (`vitlab.study.unlabelled`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from vitlab.errors import ConfigError
from vitlab.study.keys import check_mapping
from vitlab.train.config import TrainConfig

# TrainConfig keys the budget sets for every point it applies to
SETS = ("steps", "epochs", "epoch_steps", "patience", "cooldown")
WHY = (
    "the study's `budget` sets each point's steps, epoch_steps and patience from its training "
    "images (set budget=null to give every point fixed steps)"
)


@dataclass(frozen=True)
class Budget:
    patience: int = 5  # validation passes without a better accuracy before a point stops
    min_epoch_steps: int = 50  # the fewest steps between two validation passes
    max_epochs: int = 100  # the cap, in validation passes
    min_steps: int = 1000  # the cap's floor
    cooldown: float = 0.0  # the annealing after the plateau, a fraction of the steps so far

    def layer(self, images: int, batch_size: int) -> dict[str, Any]:
        """The TrainConfig keys of a point that trains on `images` images, `batch_size` a step."""
        epoch_steps = max(self.min_epoch_steps, images // batch_size)  # one pass, or the floor
        steps = max(self.min_steps, self.max_epochs * epoch_steps)
        return {"epoch_steps": epoch_steps, "steps": steps, "patience": self.patience,
                "cooldown": self.cooldown}  # fmt: skip


KEYS = tuple(f.name for f in fields(Budget))


def check_budget(spec: dict[str, Any]) -> None:
    """`budget` is null or a mapping of `KEYS` to whole numbers >= 1, `cooldown` to a fraction
    (any left out: default)."""
    value = spec.get("budget")
    if value is None:
        return
    hint = "e.g. {patience: 5, min_epoch_steps: 50, max_epochs: 100, min_steps: 2000}"
    for key, v in check_mapping("budget", value, ", ".join(KEYS), hint).items():
        if key not in KEYS:
            raise ConfigError(f"budget.{key}: the budget takes {', '.join(KEYS)}")
        if key == "cooldown":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"budget.cooldown must be a fraction in [0, 1], got {v!r}")
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"budget.{key} must be a whole number >= 1, got {v!r}")


def budget_of(spec: dict[str, Any]) -> Budget | None:
    value = spec.get("budget")
    return None if value is None else Budget(**value)


def reserved(spec: dict[str, Any]) -> dict[str, str]:
    """The TrainConfig keys a preset may not set where the budget sets them (key -> why)."""
    return dict.fromkeys(SETS, WHY) if spec.get("budget") is not None else {}


def budgeted(config: dict[str, Any]) -> bool:
    """Whether the budget applies to a point: it stops on validation accuracy, which only a
    supervised run has."""
    return config.get("objective", "supervised") == "supervised"


def point_budget(
    spec: dict[str, Any], config: dict[str, Any], count: Callable[[TrainConfig], int]
) -> dict[str, Any]:
    """A point's epoch_steps, steps and patience from its training images (its `train_images`,
    else `count`: the images its run will choose); {} where no budget applies."""
    budget = budget_of(spec)
    if budget is None or not budgeted(config):
        return {}
    cfg = TrainConfig(**config)
    return budget.layer(cfg.train_images or count(cfg), cfg.batch_size)
