"""The checks a study preset's values share: mappings of TrainConfig keys, names, axis values and
seeds. Each raises a one-line `ConfigError` that names the key (`families.vit.lr`) and what it
takes, so a plan is refused before any point trains.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import fields
from typing import Any

from vitlab.errors import ConfigError
from vitlab.study.points import ALL
from vitlab.train.config import TrainConfig

TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))
# TrainConfig keys a study sets for every point itself: a preset or --set may not set them
SET_PER_POINT = {
    "seed": "every point's seed comes from the study's `seeds` (e.g. --set seeds=[0,1])",
    "out": "every point's run directory is OUT/points/ID (choose OUT with --out)",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def did_you_mean(key: str, choices: set[str] | frozenset[str]) -> str:
    hint = difflib.get_close_matches(key, sorted(choices), n=1)
    return f" (did you mean {hint[0]}?)" if hint else ""


def check_mapping(
    where: str, value: Any, what: str = "`vitlab train` config keys", hint: str = "{} for none"
) -> dict:
    """`value` itself, which must be a mapping."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of {what} ({hint}), got {value!r}")
    return value


def check_train_keys(where: str, value: Any, reserved: dict[str, str] | None = None) -> None:
    """`value` is a mapping of TrainConfig keys, none of them one the study sets per point
    (`reserved`: key -> why; `seed` and `out` always). Their values are checked when each
    point's TrainConfig is built."""
    for key in check_mapping(where, value):
        if key not in TRAIN_KEYS:
            hint = did_you_mean(str(key), TRAIN_KEYS)
            raise ConfigError(
                f"{where}.{key}: not a `vitlab train` config key{hint}; `vitlab train --help` "
                "lists every key"
            )
        if why := per_point(key, reserved):
            raise ConfigError(f"{where}.{key} cannot be set here: {why}")


def per_point(key: str, reserved: dict[str, str] | None = None) -> str | None:
    """Why the study sets `key` for each point itself, or None where a preset may set it."""
    return {**SET_PER_POINT, **(reserved or {})}.get(key)


def check_name(where: str, name: Any) -> None:
    """A family, protocol or model name: it becomes part of point ids and run directories."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: {name!r} is not a usable name; use letters, digits and _ . + - "
            "(it names the points' run directories)"
        )


def check_text(where: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be text, got {value!r}")


def check_seeds(values: Any) -> None:
    ok = isinstance(values, list) and bool(values)
    if not ok or not all(_whole(v) and v >= 0 for v in values) or _repeats(values):
        raise ConfigError(
            f"seeds must be a list of whole numbers >= 0, each once (e.g. [0, 1]), got {values!r}"
        )


def check_axis(where: str, values: Any) -> None:
    """Sizes or shots: distinct whole numbers >= 1, or 'all'."""
    ok = isinstance(values, list) and bool(values)
    if not ok or not all(v == ALL or (_whole(v) and v >= 1) for v in values) or _repeats(values):
        raise ConfigError(
            f"{where} must be a list of whole numbers >= 1 (or 'all'), each once, got {values!r}"
        )


def drop_nulls(mapping: dict[str, Any]) -> dict[str, Any]:
    """`mapping` without the entries set to null (`--set families.hybrid=null` drops a family)."""
    return {k: v for k, v in mapping.items() if v is not None}


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _repeats(values: list[Any]) -> bool:
    return len({repr(v) for v in values}) != len(values)
