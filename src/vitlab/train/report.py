"""What a run leaves behind for people, epoch by epoch: `metrics.jsonl`, `summary.csv` and the
curves PNG (the final report and confusion matrix come from `vitlab.evaluate`). Every file is
rewritten atomically from the run's history, so a resumed run's files are exactly an
uninterrupted run's."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from vitlab.figures import new_figure, save_figure
from vitlab.files import write_text

COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
           "test_acc", "img_s"]  # fmt: skip
HELD_OUT = ("val_loss", "val_acc", "test_loss", "test_acc")  # written when an epoch has them


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """`metrics.jsonl` (one JSON object per epoch) and `summary.csv` (the main columns)."""
    write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    cols = [c for c in COLUMNS if c not in HELD_OUT or any(c in h for h in history)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for h in history:
        writer.writerow({k: _fmt(h.get(k)) for k in cols})
    write_text(run_dir / "summary.csv", buf.getvalue())


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss, accuracy and learning rate per epoch, as one PNG."""
    fig, (ax_loss, ax_acc, ax_lr) = new_figure(3)
    ep = [h["epoch"] for h in history]
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, label in (("train", "train"), ("val", "validation"), ("test", "test")):
            values = [h.get(f"{split}_{metric}") for h in history]
            if any(v is not None for v in values):
                ax.plot(ep, values, marker="o", label=label)
    ax_lr.plot(ep, [h["lr"] for h in history], marker="o", color="C2")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "top-1 accuracy"), (ax_lr, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:  # pre-training without labels: no accuracy
            ax.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax.transAxes)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return save_figure(fig, path, tight=False)
