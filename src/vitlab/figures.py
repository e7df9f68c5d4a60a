"""PNG figures: `matplotlib.figure.Figure` objects rendered with Agg, which never touch pyplot's
global state (plotting works headless and leaves a notebook's backend alone), written
atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitlab.files import atomic_path

DPI = 110


def new_figure(
    ncols: int = 1, width: float = 4.2, height: float = 3.4
) -> tuple[Figure, np.ndarray]:
    """A figure of `ncols` axes side by side, each `width` x `height` inches (tight layout)."""
    fig = Figure(figsize=(width * ncols, height), layout="tight")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def new_grid(rows: int, cols: int, size: float = 1.5) -> tuple[Figure, np.ndarray]:
    """A figure of `rows` x `cols` square axes, `size` inches each ((rows, cols) array)."""
    fig = Figure(figsize=(size * cols, size * rows), layout="tight")
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI, tight: bool = True) -> Path:
    """Write `fig` as a PNG at `path` atomically (rendered with Agg); `tight` crops the canvas
    to what is drawn."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return Path(path)
