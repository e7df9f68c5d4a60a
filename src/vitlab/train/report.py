"""What a run leaves behind for people: per-epoch `metrics.jsonl` and `summary.csv`, PNG curves,
the final report (`report.json`) and a confusion-matrix PNG. Every file is rewritten atomically
from the run's history, so a resumed run's files are exactly an uninterrupted run's."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch

from vitlab.weights.io import atomic_path

COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
           "test_acc", "img_s"]  # fmt: skip
HELD_OUT = ("val_loss", "val_acc", "test_loss", "test_acc")  # written when an epoch has them


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """`metrics.jsonl` (one JSON object per epoch) and `summary.csv` (the main columns)."""
    _write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    cols = [c for c in COLUMNS if c not in HELD_OUT or any(c in h for h in history)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for h in history:
        writer.writerow({k: _fmt(h.get(k)) for k in cols})
    _write_text(run_dir / "summary.csv", buf.getvalue())


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _figure(ncols: int, width: float = 4.2, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss, accuracy and learning rate per epoch, as one PNG."""
    plt, fig, (ax_loss, ax_acc, ax_lr) = _figure(3)
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
    ax_loss.legend()
    ax_acc.legend()
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return _save(plt, fig, path)


def plot_confusion(confusion: torch.Tensor, names: tuple[str, ...], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (true class down, predicted across), counts annotated
    when there are at most 20 classes."""
    plt, fig, (ax,) = _figure(
        1, width=max(5.0, 0.5 * len(names) + 2), height=max(4.0, 0.5 * len(names) + 1.5)
    )
    conf = confusion.double()
    rows = conf / conf.sum(1, keepdim=True).clamp(min=1)
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if len(names) <= 20:
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                color = "white" if rows[i, j] > 0.5 else "black"
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=6, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(plt, fig, path)


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    path = run_dir / "report.json"
    _write_text(path, json.dumps(report, indent=2) + "\n")
    return path


def format_report(report: dict[str, Any]) -> str:
    """A few lines for the terminal: accuracy, the weakest classes, time and speed."""
    lines = [
        f"{report['split']} top-1 {100 * report['top1']:.2f}%  top-5 {100 * report['top5']:.2f}%"
        f"  ({report['n']} images, {report['model']})"
    ]
    per = sorted(report["per_class"].items(), key=lambda kv: kv[1])
    if per:
        weakest = ", ".join(f"{k} {100 * v:.1f}%" for k, v in per[:3])
        lines.append(f"weakest classes: {weakest}")
    if "train_minutes" in report:
        lines.append(
            f"training: {report['train_minutes']:.2f} min of steps, {report['img_s']:.0f} img/s, "
            f"{_count(report['epochs'], 'epoch')}, {_count(report['steps'], 'step')}"
        )
    skipped = report.get("skipped", 0) + report.get("skipped_eval", 0)
    if skipped:
        lines.append(f"skipped {skipped} unreadable image(s) (listed in the log above)")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
