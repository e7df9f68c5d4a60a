"""The studies: one module each, all in `STUDIES`, which the plan, the report and
`vitlab study` read (nothing else names a study).

A study module defines one `Study`: its name and description, its axis, the preset keys of its
own and their check, its expansion into points, its summary sentences and any plot specifics.
Adding a study is a module here, a line in `STUDIES`, its presets in
`configs/studies/NAME-{quick,full}.yaml`, and its tests. This package imports no torch, so
`vitlab study --help` lists the studies at once.
"""

from __future__ import annotations

from vitlab.errors import ConfigError
from vitlab.study.studies import data_scaling, model_scaling, transfer
from vitlab.study.studies.base import COMMON_KEYS, Axis, Study

__all__ = ["COMMON_KEYS", "STUDIES", "Axis", "Study", "get_study"]

STUDIES: dict[str, Study] = {
    s.name: s
    for s in (
        data_scaling.STUDY,
        transfer.STUDY,
        model_scaling.STUDY,
    )
}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    return STUDIES[name]
