"""`vitlab study`: the paper's claims about data, pre-training and scale as experiments anyone can
rerun (sections 3, 4.2-4.4; Figures 3, 4 and 5, at the size of a laptop CPU).

- `data-scaling`: model families trained on class-balanced subsets of growing size;
- `transfer`: pre-training on a source, fine-tuning on k images per class of a target the source
  never saw, against the same models trained from scratch on those k;
- `model-scaling`: models of growing size at one data set and step budget, against compute.

A study is a plan of points (`vitlab.study.plan`), each an ordinary `vitlab train` run, run
here, in N processes or by any scheduler (`vitlab.study.runner`), and one report built from the
points' own report.json files (`vitlab.study.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitlab.study.plan import PRESETS, STUDIES, Plan, check_data, make_plan, read_plan, write_plan
from vitlab.study.report import StudyReport, build_report
from vitlab.study.runner import Outcome, print_commands, run_points

__all__ = ["PRESETS", "STUDIES", "Outcome", "Plan", "StudyReport", "collect", "plan_study"]
__all__ += ["print_commands", "run_study"]


def plan_study(study: str, preset: str, out: Path, sets: dict[str, Any] | None = None) -> Plan:
    """The study's plan, written to `out` (study.yaml and one point.yaml per point) before any
    work; a folder that holds a different plan of the same points is refused."""
    plan = make_plan(study, preset, out, sets)
    check_data(plan)
    write_plan(plan)
    return plan


def run_study(plan: Plan, jobs: int = 1) -> tuple[Outcome, StudyReport]:
    """Train the plan's unfinished points (`jobs` at a time), rewriting the report after each
    one, so the page shows every finished point even while the study runs."""
    outcome = run_points(plan, jobs, on_done=lambda _: build_report(plan))
    return outcome, build_report(plan)


def collect(out: Path, study: str | None = None) -> StudyReport:
    """The report of the study in `out` from whatever points exist there (`--collect`)."""
    plan = read_plan(out)
    if study is not None and plan.study != study:
        from vitlab.errors import ConfigError

        raise ConfigError(f"{out} holds a {plan.study} study, not {study}")
    return build_report(plan)
