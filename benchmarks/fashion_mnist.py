"""Train the Fashion-MNIST presets from scratch and print test accuracy, wall minutes and img/s.

    flock /tmp/vitlab-heavy.lock python benchmarks/fashion_mnist.py                 # all three
    python benchmarks/fashion_mnist.py fashion_mnist_vit --set epochs=2             # a quick look
    python benchmarks/fashion_mnist.py fashion_mnist_vit_long --resume              # after a stop

Each preset trains from scratch in its own run directory under --out (default runs/bench),
replacing an earlier run there; the figures come from the run's report.json. Wall minutes count
everything from start to report (data loading, validation, checkpoints); "train min" only the
optimiser steps. Say which machine ran them.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from vitlab.cli.common import parse_set
from vitlab.train.config import build_config
from vitlab.train.run import fit

PRESETS = ["fashion_mnist_vit", "fashion_mnist_vit_long", "fashion_mnist_bit"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def bench(preset: str, out: Path, overrides: dict, resume: bool = False) -> dict:
    cfg = build_config(preset, {**overrides, "out": str(out / preset)})
    t0 = time.perf_counter()
    # from scratch, unless asked to continue an interrupted run
    result = fit(cfg, resume="auto") if resume else fit(cfg, overwrite=True)
    wall = (time.perf_counter() - t0) / 60
    r = result.report
    return {
        "preset": preset,
        "model": cfg.model,
        "epochs": r["epochs"],
        "test_top1": 100 * r["top1"],
        "wall_min": wall,
        "train_min": r["train_minutes"],
        "img_s": r["img_s"],
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "presets", nargs="*", default=PRESETS, help="presets to train (default: all three)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="parent of the run directories"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override every preset"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs interrupted in --out instead of starting over (train minutes "
        "add up over the parts; wall minutes count this part only)",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [bench(name, args.out, parse_set(args.set), args.resume) for name in args.presets]
    print(f"\nFashion-MNIST test accuracy on {machine()}")
    head = f"{'preset':<24}{'epochs':>7}{'test top-1':>12}{'wall min':>10}"
    print(head + f"{'train min':>11}{'img/s':>8}")
    for r in rows:
        print(
            f"{r['preset']:<24}{r['epochs']:>7}{r['test_top1']:>11.2f}%{r['wall_min']:>10.2f}"
            f"{r['train_min']:>11.2f}{r['img_s']:>8.0f}"
        )
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
