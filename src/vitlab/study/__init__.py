"""`vitlab study`: the paper's claims about data, pre-training and scale as experiments anyone can
rerun (sections 3, 4.2-4.4; Figures 3, 4 and 5, at the size of a laptop CPU).

Each study is one module in `vitlab.study.studies` (its keys, its points, its summary and plot
specifics), all in one registry, `STUDIES`. The layers every study shares are modules here: the
convergence budget (`budget`), the learning rate chosen per family from a grid (`lr_grid`), and
the arm pre-trained without labels (`unlabelled`). A study is a plan of points
(`vitlab.study.plan`), each an ordinary `vitlab train` run, run here, in N processes or by any
scheduler (`vitlab.study.runner`), and one report built from the points' own report.json files
(`vitlab.study.report`).

This package imports its modules when a name is first used, so that `vitlab study --help` reads
the registry without loading the runner, the report's plotting or torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitlab.study.plan import Plan
    from vitlab.study.report import StudyReport
    from vitlab.study.runner import Outcome

# name -> the module that defines it, imported on first use
_LAZY = {
    "PRESETS": "vitlab.study.plan",
    "Plan": "vitlab.study.plan",
    "STUDIES": "vitlab.study.studies",
    "StudyReport": "vitlab.study.report",
    "Outcome": "vitlab.study.runner",
    "print_commands": "vitlab.study.runner",
}
_MODULES = ("budget", "curves", "keys", "lr_grid", "plan", "points", "report", "runner", "studies")
_MODULES += ("unlabelled",)

__all__ = ["PRESETS", "STUDIES", "Outcome", "Plan", "StudyReport", "collect", "plan_study"]
__all__ += ["print_commands", "run_study"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plan_study(study: str, preset: str, out: Path, sets: dict[str, Any] | None = None) -> Plan:
    """The study's plan, written to `out` (study.yaml and one point.yaml per point) before any
    work; a folder that holds a different plan of the same points is refused."""
    from vitlab.study.plan import TrainImages, check_data, make_plan, write_plan

    count = TrainImages()
    plan = make_plan(study, preset, out, sets, count)
    check_data(plan, count)
    write_plan(plan)
    return plan


def run_study(plan: Plan, jobs: int = 1) -> tuple[Outcome, StudyReport]:
    """Train the plan's unfinished points (`jobs` at a time), rewriting the report after each
    one, so the page shows every finished point even while the study runs."""
    from vitlab.study.report import build_report
    from vitlab.study.runner import run_points

    outcome = run_points(plan, jobs, on_done=lambda _: build_report(plan))
    return outcome, build_report(plan)


def collect(out: Path, study: str | None = None) -> StudyReport:
    """The report of the study in `out` from whatever points exist there (`--collect`)."""
    from vitlab.study.plan import read_plan
    from vitlab.study.report import build_report

    plan = read_plan(out)
    if study is not None and plan.study != study:
        from vitlab.errors import ConfigError

        raise ConfigError(f"{out} holds a {plan.study} study, not {study}")
    return build_report(plan)
