"""report.json files written by a test, not by training: what the report, the runner and the
learning-rate grids read from a finished point."""

import json

from vitlab.study.points import Point


def finish(p: Point, top1: float | None = 0.5, val_acc: float = 0.5, **extra) -> dict:
    """Write a report.json for `p` as `fit` would (its figures given), and return it."""
    report = {
        "split": "test",
        "model": p.config["model"],
        "top1": top1,
        "top5": None if top1 is None else 0.9,
        "per_class": {str(c): 0.5 for c in range(10)},
        "train_images": p.config.get("train_images") or 1000,
        "epochs": 2,
        "steps": 100,
        "max_steps": 500,
        "stopped": "patience",
        "batch_size": p.config["batch_size"],
        "params": 1000,
        "gflops": 0.001,
        "train_minutes": 0.1,
        "wall_minutes": 0.2,
        "best": {"val_acc": val_acc, "epoch": 1, "step": 50},
        "weights": str(p.run_dir / "best.safetensors"),
        "machine": "a test, no training",
        **extra,
    }
    p.run_dir.mkdir(parents=True, exist_ok=True)
    (p.run_dir / "report.json").write_text(json.dumps(report))
    return report
