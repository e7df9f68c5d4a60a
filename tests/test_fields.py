"""vitlab.fields: values coerced to their dataclass field's type hint, or a one-line ConfigError
naming the field (the shared mechanism behind TrainConfig, ViTConfig and ResNetConfig)."""

from __future__ import annotations  # string annotations, as the config modules use

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

import vitlab.fields
from vitlab.errors import ConfigError
from vitlab.fields import coerce, coerce_fields


@dataclass
class Inner:
    n: int = 1


@dataclass
class Example:
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    size: int | None = None
    pair: tuple[float, float] = (0.9, 0.999)
    names: tuple[str, ...] | None = None
    sizes: tuple[int, ...] = (1, 2)
    options: dict[str, Any] = field(default_factory=dict)
    anything: Any = None
    inner: Inner | None = None

    def __post_init__(self) -> None:
        coerce_fields(self)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"rate": "1e-6"}, {"rate": 1e-6}),
        ({"rate": "1.0e-5"}, {"rate": 1e-5}),
        ({"rate": "3"}, {"rate": 3.0}),
        ({"rate": 2}, {"rate": 2.0}),
        ({"rate": np.float32(0.25)}, {"rate": 0.25}),
        ({"count": np.int64(7)}, {"count": 7}),
        ({"size": None}, {"size": None}),
        ({"size": 3}, {"size": 3}),
        ({"pair": [0.9, 1]}, {"pair": (0.9, 1.0)}),
        ({"names": ["a", "b"]}, {"names": ("a", "b")}),
        ({"names": []}, {"names": ()}),
        ({"sizes": [3, 4, 6, 3]}, {"sizes": (3, 4, 6, 3)}),
        ({"options": {"depth": 4}}, {"options": {"depth": 4}}),
        ({"anything": object}, {"anything": object}),
        ({"inner": Inner(2)}, {"inner": Inner(2)}),
    ],
)
def test_values_are_coerced_to_the_declared_type(kw, expected):
    obj = Example(**kw)
    for name, value in expected.items():
        got = getattr(obj, name)
        assert got == value and type(got) is type(value), (name, got)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"count": "abc"}, "count must be int, got 'abc'"),
        ({"count": "3"}, "count must be int, got '3'"),
        ({"count": 3.0}, "count must be int, got 3.0"),
        ({"count": True}, "count must be int, got True"),
        ({"count": None}, "count must be int, got None"),
        ({"rate": "fast"}, "rate must be float, got 'fast'"),
        ({"rate": False}, "rate must be float, got False"),
        ({"flag": 1}, "flag must be bool, got 1"),
        ({"flag": "true"}, "flag must be bool, got 'true'"),
        ({"name": 5}, "name must be str, got 5"),
        ({"mode": "c"}, "mode='c' is not one of 'a', 'b'"),
        ({"size": "big"}, "size must be int, got 'big'"),
        ({"pair": [0.9]}, "pair must be a list of 2 numbers, got [0.9]"),
        ({"pair": 0.9}, "pair must be a list of 2 numbers, got 0.9"),
        ({"pair": [0.9, "x"]}, "pair must be float, got 'x'"),
        ({"pair": [0.9, "nan"]}, "pair must be a finite number, got 'nan'"),
        ({"pair": [0.9, float("inf")]}, "pair must be a finite number, got inf"),
        ({"names": "ab"}, "names must be a list of strings, got 'ab'"),
        ({"names": ["a", 1]}, "names must be str, got 1"),
        ({"sizes": [1, 2.5]}, "sizes must be int, got 2.5"),
        ({"sizes": {1: 2}}, "sizes must be a list of whole numbers"),
        ({"options": [1]}, "options must be a mapping, got [1]"),
        ({"inner": {"n": 2}}, "inner must be Inner, got {'n': 2}"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_field(kw, message):
    with pytest.raises(ConfigError) as e:
        Example(**kw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_coerce_one_value():
    assert coerce("lr", "3e-3", float) == 3e-3
    assert coerce("steps", None, int | None) is None
    with pytest.raises(ConfigError, match="steps must be int"):
        coerce("steps", "10", int | None)


def test_an_unsupported_hint_is_a_programming_error():
    with pytest.raises(TypeError, match="not supported"):
        coerce("xs", [1], list[int])


def test_the_module_is_on_the_ground_floor():
    """fields imports nothing of vitlab but vitlab.errors, so any layer may use it."""
    tree = ast.parse(Path(vitlab.fields.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in imported if m.split(".")[0] == "vitlab"} == {"vitlab.errors"}
