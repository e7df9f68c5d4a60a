"""PNG figures of the inspection arrays (matplotlib, Agg backend; every write atomic).

Figures are built as `matplotlib.figure.Figure` objects, which render with Agg and never touch
pyplot's global state, so plotting works headless and leaves a notebook's backend alone."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vitlab.figures import DPI, save_figure
from vitlab.inspect.embeddings import FilterComponents, PositionSimilarity

HEAT_CMAP = "jet"


def _show_image(ax: Axes, image: np.ndarray) -> None:
    """(H, W, C) floats in [0, 1], C = 1 or 3."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(image, 0, 1))
    ax.set_axis_off()


def _stretch(heat: np.ndarray) -> np.ndarray:
    """Scale a map from its minimum (0) to its maximum (1); a constant map becomes 0."""
    lo, hi = float(heat.min()), float(heat.max())
    return (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)


def _overlay(ax: Axes, image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> None:
    """The image with `heat` (gh, gw), min-max scaled, stretched over it."""
    _show_image(ax, image)
    h, w = image.shape[:2]
    ax.imshow(
        _stretch(heat),
        cmap=HEAT_CMAP,
        alpha=alpha,
        extent=(-0.5, w - 0.5, h - 0.5, -0.5),  # the image's own pixel-centred extent
        interpolation="bilinear",
        vmin=0,
        vmax=1,
    )


def plot_overlay(image: np.ndarray, heat: np.ndarray, path: str | Path, title: str) -> Path:
    """Image | the map with its values | the map min-max scaled over the image (Figure 6)."""
    fig = Figure(figsize=(9, 3.3))
    axes = fig.subplots(1, 3)
    _show_image(axes[0], image)
    axes[0].set_title("input (as the model sees it)", fontsize=8)
    im = axes[1].imshow(heat, cmap=HEAT_CMAP)
    axes[1].set_axis_off()
    axes[1].set_title(f"share per patch ({heat.shape[0]}x{heat.shape[1]} grid)", fontsize=8)
    cbar = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    cbar.ax.tick_params(labelsize=6)
    _overlay(axes[2], image, heat)
    axes[2].set_title("overlay (min to max)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def _axes_grid(n: int, cell: tuple[float, float], max_cols: int = 7) -> tuple[Figure, np.ndarray]:
    """A figure with n cells of `cell` inches (width, height), at most `max_cols` a row, axes
    hidden: (figure, (rows, cols) array of axes)."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cell[0] * cols, cell[1] * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def plot_heads(
    image: np.ndarray, maps: np.ndarray, heads: Sequence[int], path: str | Path, title: str
) -> Path:
    """The image and one overlay per head: maps (heads, gh, gw)."""
    fig, axes = _axes_grid(len(heads) + 1, (1.9, 2.0))
    _show_image(axes[0, 0], image)
    axes[0, 0].set_title("input", fontsize=8)
    for i, (h, m) in enumerate(zip(heads, maps), start=1):
        ax = axes.flat[i]
        _overlay(ax, image, m)
        ax.set_title(f"head {h}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def plot_filters(comps: FilterComponents, path: str | Path, title: str) -> Path:
    """Each principal component as a P x P (x C) image, min-max scaled (Figure 7 left)."""
    fig, axes = _axes_grid(len(comps.images), (1.3, 1.45))
    for i, (img, ratio) in enumerate(zip(comps.images, comps.explained_variance_ratio)):
        lo, hi = img.min(), img.max()
        scaled = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax = axes.flat[i]
        if scaled.shape[-1] == 1:
            ax.imshow(scaled[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(scaled[..., :3], interpolation="nearest")
        ax.set_title(f"PC{i + 1} {100 * ratio:.1f}%", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def similarity_mosaic(sim: np.ndarray) -> np.ndarray:
    """(gh, gw, gh, gw) -> one (gh*(gh+1)-1, gw*(gw+1)-1) image of the small maps, separated by
    one-pixel gaps (NaN) so a single imshow draws all of them."""
    gh, gw = sim.shape[:2]
    mosaic = np.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), np.nan)
    for i in range(gh):
        for j in range(gw):
            r, c = i * (gh + 1), j * (gw + 1)
            mosaic[r : r + gh, c : c + gw] = sim[i, j]
    return mosaic


def plot_position_similarity(sim: PositionSimilarity, path: str | Path, title: str) -> Path:
    """The grid of small grids of Figure 7 (centre): tile (i, j) shows the cosine similarity of
    patch (i, j)'s position embedding to every patch position."""
    gh, gw = sim.similarity.shape[:2]
    mosaic = similarity_mosaic(sim.similarity)
    side = max(6.0, 2.2 * mosaic.shape[1] / DPI)  # about 1.6 screen pixels per value
    fig = Figure(figsize=(side + 0.5, side))
    ax = fig.subplots()
    im = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([j * (gw + 1) + (gw - 1) / 2 for j in range(gw)], [str(j + 1) for j in range(gw)])
    ax.set_yticks([i * (gh + 1) + (gh - 1) / 2 for i in range(gh)], [str(i + 1) for i in range(gh)])
    ax.tick_params(labelsize=max(4, 9 - gw // 6), length=0)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_attention_distance(
    distance: np.ndarray, path: str | Path, title: str, img_px: int | None = None
) -> Path:
    """Mean attention distance (depth, heads) in pixels: one dot per head against the block
    index (Figure 7 right)."""
    depth, n_heads = distance.shape
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.subplots()
    cmap = colormaps["tab20" if n_heads > 10 else "tab10"]
    for h in range(n_heads):
        ax.scatter(np.arange(depth), distance[:, h], s=14, color=cmap(h % cmap.N), label=f"{h}")
    ax.set_xlabel("network depth (block)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if img_px:
        ax.set_ylim(0, max(img_px * 0.75, float(distance.max()) * 1.05))
    ax.grid(alpha=0.3)
    if n_heads <= 16:
        ax.legend(
            title="head", fontsize=6, title_fontsize=7, loc="upper left", bbox_to_anchor=(1, 1)
        )
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
