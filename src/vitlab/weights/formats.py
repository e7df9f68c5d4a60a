"""The one registry of the file formats vitlab reads and writes.

Two kinds of format:

- weight layouts (`SOURCE_NAMES`: vitlab, timm, google, hf, torchvision), tensors that vitlab
  loads into a PyTorch model. They are told apart by content (`vitlab.weights.checkpoint`'s
  `SOURCES`, built in this order and checked against it; `source="auto"` tries them in it).
- runtime graphs (`GRAPHS`: ONNX, OpenVINO IR), a whole computation that another runtime
  runs as it was exported. vitlab runs them for predict, eval, serve and bench, but cannot
  train, fine-tune, resample or convert them back. They are told apart by their file name.

Every place that asks "is this ONNX?" asks `runtime_graph(path)` here; which extra a format
needs, and the functions that load and save it, are looked up here by name too. This module
imports nothing heavy (no torch), so the command line reads it for `--help`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vitlab.errors import require

SourceName = Literal["vitlab", "timm", "google", "hf", "torchvision"]
SOURCE_NAMES: tuple[SourceName, ...] = ("vitlab", "timm", "google", "hf", "torchvision")
AUTO = "auto"


@dataclass(frozen=True)
class GraphFormat:
    """A runtime graph: how its files are named, what runs it, and where its code lives."""

    name: str  # as `save_checkpoint(format=...)` and `vitlab convert --to` spell it
    label: str  # as people write it: "ONNX"
    suffixes: tuple[str, ...]  # lower case, with the dot; the first is the one written
    extra: str  # the vitlab extra that installs `packages`
    packages: tuple[str, ...]  # importable modules that loading or saving needs
    runner: str  # what runs it, for messages: "ONNX Runtime's CPU provider"
    device: str  # the only device it runs on ("cpu")
    load: str  # "module:function": (path, **overrides) -> a model vitlab runs
    save: str  # "module:function": (model, path, **options) -> a report with .path

    def require(self) -> None:
        """Refuse, with the install line, when a package this format needs is missing."""
        for package in self.packages:
            require(package, self.extra, f"{self.label} export and inference")

    def loader(self) -> Callable[..., Any]:
        self.require()
        return _entry(self.load)

    def saver(self) -> Callable[..., Any]:
        self.require()
        return _entry(self.save)


ONNX = GraphFormat(
    name="onnx",
    label="ONNX",
    suffixes=(".onnx",),
    extra="onnx",
    packages=("onnx", "onnxruntime"),
    runner="ONNX Runtime's CPU provider",
    device="cpu",
    load="vitlab.weights.onnx:load_onnx",
    save="vitlab.weights.onnx:export_onnx",
)

OPENVINO = GraphFormat(
    name="openvino",
    label="OpenVINO IR",
    suffixes=(".xml",),
    extra="openvino",
    packages=("openvino",),
    runner="OpenVINO's CPU plugin",
    device="cpu",
    load="vitlab.weights.openvino:load_openvino",
    save="vitlab.weights.openvino:export_openvino",
)

GRAPHS: dict[str, GraphFormat] = {g.name: g for g in (ONNX, OPENVINO)}
# Every name `save_checkpoint(format=...)` and `vitlab convert --to` take.
FORMAT_NAMES: tuple[str, ...] = (*SOURCE_NAMES, *GRAPHS)


def runtime_graph(path: str | Path | None) -> GraphFormat | None:
    """The runtime-graph format `path` is named as (`m.onnx`: ONNX), or None for weights, hub
    references and folders (which the weight layouts tell apart by content)."""
    if path is None:
        return None
    suffix = Path(str(path)).suffix.lower()
    return next((g for g in GRAPHS.values() if suffix in g.suffixes), None)


def graph_format(name: str) -> GraphFormat | None:
    """The runtime-graph format called `name`, or None when `name` is a weight layout."""
    return GRAPHS.get(name)


def _entry(spec: str) -> Callable[..., Any]:
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)
