"""The names of the weight layouts vitlab reads and writes, in the order `source="auto"` tries
them. The source registry (`vitlab.weights.checkpoint.SOURCES`) is built in this order and
checked against it; this module imports nothing, so the command line can offer the names
without loading torch."""

from __future__ import annotations

from typing import Literal

SourceName = Literal["vitlab", "timm", "google", "hf", "torchvision"]
SOURCE_NAMES: tuple[SourceName, ...] = ("vitlab", "timm", "google", "hf", "torchvision")
AUTO = "auto"
