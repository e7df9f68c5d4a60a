"""Distillation on Fashion-MNIST (DeiT): does a CNN teacher give the ViT what it lacks?

    flock /tmp/vitlab-heavy.lock python benchmarks/distill.py              # everything, resumable
    python benchmarks/distill.py --epochs 2 --seeds 0                     # a quick look

Three runs per seed, all with the same steps (`--epochs` of the 57,000 training images left
after the 3,000-image validation hold-out, batch 256, the demo's recipe):

1. the teacher: the BiT ResNet of `configs/fashion_mnist_bit.yaml`;
2. the ViT from scratch: the demo's, `configs/fashion_mnist_vit.yaml`;
3. the same ViT with a distillation token, distilled from the teacher of its seed (hard, DeiT's
   best): `configs/fashion_mnist_deit.yaml`.

Each is tested with its last weights on the 10,000 test images. Every run has its own folder
under --out and resumes there, so the script can be stopped and run again at any time. It
prints one table and writes it to OUT/results.json. Say which machine ran it.
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
from vitlab.train.config import build_config
from vitlab.train.run import fit

ARMS = {
    "teacher": ("BiT ResNet (the teacher)", "fashion_mnist_bit"),
    "vit": ("ViT from scratch", "fashion_mnist_vit"),
    "deit": ("ViT distilled from the ResNet", "fashion_mnist_deit"),
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
    p.add_argument("--out", type=Path, default=Path("runs/bench-distill"))
    p.add_argument("--epochs", type=float, default=22.0, help="epochs of every run (the demo's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--distill", choices=("hard", "soft"), default="hard")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        common = {"epochs": args.epochs, "seed": seed}
        teacher = args.out / f"teacher-s{seed}"
        for arm, (_, preset) in ARMS.items():
            out = args.out / (f"{arm}-s{seed}" if arm != "deit" else f"deit-{args.distill}-s{seed}")
            extra = {"teacher": str(teacher / "last.safetensors"), "distill": args.distill}
            r = run(preset, {**common, "out": str(out), **(extra if arm == "deit" else {})})
            rows.append({"arm": arm, "seed": seed, "test_top1": 100 * r["top1"],
                         "steps": r["steps"], "params": r["params"],
                         "minutes": r["wall_minutes"]})  # fmt: skip
    _print(rows)
    cpu = platform.processor() or platform.machine()
    summary = {"machine": f"{cpu}, torch {torch.__version__}", "epochs": args.epochs,
               "distill": args.distill, "rows": rows,
               "minutes": (time.perf_counter() - t0) / 60}  # fmt: skip
    write_text(args.out / "results.json", json.dumps(summary, indent=2) + "\n")


def _print(rows: list[dict]) -> None:
    print(f"{'run':<32} {'seed':>4} {'test top-1':>10} {'steps':>6} {'params':>8} {'min':>6}")
    for r in rows:
        print(f"{ARMS[r['arm']][0]:<32} {r['seed']:>4} {r['test_top1']:>9.2f}% {r['steps']:>6} "
              f"{r['params'] / 1e6:>7.2f}M {r['minutes']:>6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
