"""Model soups on Fashion-MNIST: is the average of several fine-tunes better than the best one?

    flock /tmp/vitlab-heavy.lock python benchmarks/soup.py                   # everything, resumable
    python benchmarks/soup.py --init runs/fashion_mnist_mae/last.safetensors  # reuse a pre-training
    python benchmarks/soup.py --epochs 1 --pretrain-epochs 1 --out /tmp/soup   # a quick look

Wortsman et al. (2022) fine-tune one pre-trained model many times with other hyperparameters
and average the weights. Here:

1. the starting weights: the demo ViT (`vit_micro_p7`) pre-trained without labels by MAE on the
   57,000 training images (`configs/fashion_mnist_mae.yaml`, `--pretrain-epochs`), or `--init`;
2. the ingredients: six fine-tunes of it on the labelled images (`configs/fashion_mnist_finetune
   .yaml`, the same `--epochs` each, no early stopping, last weights), one per row of
   INGREDIENTS: learning rates, augmentations, label smoothing;
3. `vitlab soup --greedy`: every ingredient's, the uniform soup's and the greedy soup's
   validation top-1 (the 3,000 images every run held out, which choose) and test top-1 (the
   10,000 test images, reported only).

Every run has its own folder under --out and resumes there. It prints one table and writes
OUT/results.json (and OUT/soup/soup.png). Say which machine ran it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from vitlab.files import write_text
from vitlab.soup import make_soup
from vitlab.train.config import build_config
from vitlab.train.run import fit

# name -> the keys that differ from configs/fashion_mnist_finetune.yaml (lr 1e-3, flips,
# random erasing 0.25, label smoothing 0.1)
INGREDIENTS: dict[str, dict[str, Any]] = {
    "lr1e-3": {},
    "lr5e-4": {"lr": 5.0e-4},
    "lr2e-3": {"lr": 2.0e-3},
    "mixup": {"mixup": 0.2},
    "randaug": {"randaug_m": 9},
    "weak-aug": {"random_erase": 0.0, "label_smoothing": 0.0},
}


def run(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train one preset with `overrides` (resuming its folder) and return its report."""
    done = Path(overrides["out"]) / "report.json"
    if done.is_file():
        return json.loads(done.read_text())
    logging.getLogger("vitlab").info("== %s", overrides["out"])
    return fit(build_config(preset, overrides), resume="auto").report


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench-soup"))
    p.add_argument("--init", type=Path, help="start from these weights instead of pre-training")
    p.add_argument("--pretrain-epochs", type=float, default=30.0, help="MAE epochs (the study's)")
    p.add_argument("--epochs", type=float, default=10.0, help="epochs of every fine-tune")
    p.add_argument("--only", nargs="+", choices=list(INGREDIENTS), help="a subset of them")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    init = args.init
    if init is None:
        pre = args.out / "pretrain"
        run("fashion_mnist_mae", {"epochs": args.pretrain_epochs, "out": str(pre)})
        init = pre / "last.safetensors"
    names = args.only or list(INGREDIENTS)
    fixed = {"init_from": str(init), "epochs": args.epochs, "patience": None,
             "report_best": False}  # fmt: skip
    paths = []
    for name in names:
        out = args.out / f"ft-{name}"
        run("fashion_mnist_finetune", {**fixed, **INGREDIENTS[name], "out": str(out)})
        paths.append(out / "last.safetensors")
    report = make_soup(paths, args.out / "soup", greedy=True, data="fashion-mnist")
    rows = [{"name": n, "val_top1": r["val_top1"], "test_top1": r["test_top1"],
             "kept": r.get("kept")} for n, r in zip(names, report["ingredients"])]  # fmt: skip
    _print(rows, report)
    cpu = platform.processor() or platform.machine()
    summary = {"machine": f"{cpu}, torch {torch.__version__}", "init": str(init),
               "epochs": args.epochs, "ingredients": rows, "uniform": report["uniform"],
               "greedy": report["greedy"],
               "minutes": (time.perf_counter() - t0) / 60}  # fmt: skip
    write_text(args.out / "results.json", json.dumps(summary, indent=2) + "\n")


def _print(rows: list[dict], report: dict[str, Any]) -> None:
    print(f"{'model':<22} {'val top-1':>9} {'test top-1':>10}")
    for r in rows:
        kept = " (in the greedy soup)" if r["kept"] else ""
        print(f"{r['name']:<22} {100 * r['val_top1']:>8.2f}% {100 * r['test_top1']:>9.2f}%{kept}")
    best = max(rows, key=lambda r: r["val_top1"])
    u, g = report["uniform"], report["greedy"]
    print(f"{'best by validation':<22} {100 * best['val_top1']:>8.2f}% "
          f"{100 * best['test_top1']:>9.2f}% ({best['name']})")  # fmt: skip
    print(f"{'uniform soup':<22} {100 * u['val_top1']:>8.2f}% {100 * u['test_top1']:>9.2f}%")
    print(f"{'greedy soup':<22} {100 * g['val_top1']:>8.2f}% {100 * g['test_top1']:>9.2f}%")


if __name__ == "__main__":
    main()
