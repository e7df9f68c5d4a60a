"""Typed dataclass fields: coercion of YAML/CLI values to the declared type, with one-line
ConfigErrors naming the field.

The config dataclasses (`TrainConfig`, `ViTConfig`, `ResNetConfig`) call `coerce_fields(self)`
first thing in `__post_init__`, so a value read from YAML, JSON or `--set` is either turned into
the type its field declares or rejected with a message that names the field, the value and the
type expected. The rules:

- `int`: an int, never a bool, a float (not even 2.0) or a string.
- `float`: a finite float, an int, or a numeric string in any notation ("1e-6", "1.0e-5"), since
  YAML 1.1 reads "1e-6" as a string; never a bool, nan or inf.
- `bool`, `str` and other classes (a nested config): an instance of exactly that type.
- `Literal[...]`: one of the listed values. `X | None`: None, or a value of X.
- `tuple[X, Y]` and `tuple[X, ...]`: a list or tuple (of that length), each item coerced.
- `dict[K, V]`: a mapping (its items are kept as they are). `Any`: anything.

This is the ground floor: it imports nothing of vitlab but `vitlab.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from vitlab.errors import ConfigError

# How a list of items of one type is described in an error message.
_PLURALS = {float: "numbers", int: "whole numbers", str: "strings", bool: "booleans"}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The class's field types, resolved once (string annotations included)."""
    return typing.get_type_hints(cls)


def coerce_fields(obj: Any) -> None:
    """Coerce every field of the dataclass instance `obj` to its type hint, in place; a value
    that does not fit is a ConfigError naming the field."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, coerce(f.name, getattr(obj, f.name), hints[f.name]))


def coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as type `hint`, or a ConfigError naming the field `name`, the value and the type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _union(name, value, args)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        return _tuple(name, value, args)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float:
        return _float(name, value)
    if hint is int:
        return _int(name, value)
    if not isinstance(hint, type):
        raise TypeError(f"coerce_fields cannot check {name}: type hint {hint!r} is not supported")
    if not isinstance(value, hint):
        raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")
    return value


def _union(name: str, value: Any, args: tuple[Any, ...]) -> Any:
    """The first member of `X | Y | None` that takes `value`, else the first member's error."""
    if value is None and type(None) in args:
        return None
    errors = []
    for a in (a for a in args if a is not type(None)):
        try:
            return coerce(name, value, a)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0])


def _tuple(name: str, value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A list or tuple as `tuple[X, ...]` (any length) or `tuple[X, Y]` (exactly that long)."""
    if len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list of {_plural(args[:1])}, got {value!r}")
        return tuple(coerce(name, v, args[0]) for v in value)
    if not isinstance(value, (list, tuple)) or len(value) != len(args):
        raise ConfigError(f"{name} must be a list of {len(args)} {_plural(args)}, got {value!r}")
    return tuple(coerce(name, v, a) for v, a in zip(value, args))


def _plural(args: tuple[Any, ...]) -> str:
    kinds = {_PLURALS.get(a, "values") for a in args}
    return kinds.pop() if len(kinds) == 1 else "values"


def _float(name: str, value: Any) -> float:
    out = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        out = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads "1e-6" (no decimal point) as a string
        with contextlib.suppress(ValueError):
            out = float(value)
    if out is None:
        raise ConfigError(f"{name} must be float, got {value!r} (a number such as 1e-6)")
    if not math.isfinite(out):  # nan passes every `<=` check, and lr=inf trained silently
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return out


def _int(name: str, value: Any) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)  # also numpy's integers, as shapes read from arrays are
    raise ConfigError(f"{name} must be int, got {value!r} (a whole number)")
