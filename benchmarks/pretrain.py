"""Pre-training without labels on Fashion-MNIST: does it give the ViT what the paper says it lacks?

    flock /tmp/vitlab-heavy.lock python benchmarks/pretrain.py             # everything, resumable
    python benchmarks/pretrain.py --sizes 1000 --lrs 3e-3 --seeds 0        # a smaller look

1. Pre-train the demo's ViT with MAE (`configs/fashion_mnist_mae.yaml`) on the 57,000 training
   images left after the 3,000-image validation hold-out, without their labels.
2. On 1,000, 3,000 and 10,000 labelled images (class-balanced subsets), train three arms: the
   ViT from scratch, the BiT ResNet from scratch, and the ViT fine-tuned from the MAE encoder.
   Every run trains until validation accuracy stops improving (patience 5 validation passes,
   each pass after one epoch of its subset but at least 50 steps; a cap of 150 epochs or 3,000
   steps, whichever is more) and is tested with its checkpoint of best validation accuracy.
3. For each arm and size, the learning rate of the best validation accuracy among `--lrs` is
   chosen, and its test top-1 is the figure (the test set chooses nothing).

Every run has its own folder under --out and resumes there (`--resume auto`), so the script can
be stopped and run again at any time. It prints one table (test top-1, steps, why each stopped)
and writes it to OUT/results.json. Say which machine ran it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from vitlab.files import write_text
from vitlab.train.config import build_config
from vitlab.train.run import fit

SIZES = (1000, 3000, 10000)
LRS = (1e-3, 3e-3)
BATCH = 128
# the recipe every labelled run shares: the data-scaling study's (configs/studies/)
RECIPE: dict[str, Any] = {
    "data": "fashion-mnist", "img_size": 28, "val_split": 0.05, "batch_size": BATCH,
    "optimizer": "adamw", "weight_decay": 0.05, "warmup_steps": 80, "schedule": "cosine",
    "clip_grad": 1.0, "label_smoothing": 0.1, "hflip": 0.5, "random_erase": 0.25,
    "precision": "auto", "report_best": True, "patience": 5,
}  # fmt: skip
VIT = {"model": "vit_micro_p7", "model_args": {"pool": "gap"}}
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit": ("ViT from scratch", VIT),
    "resnet": ("BiT ResNet from scratch", {
        "model": "bit_r50x1",
        "model_args": {"layers": [1, 1, 1, 1], "stem_type": "small", "stem_width": 16,
                       "gn_groups": 8},
    }),
    "vit_mae": ("ViT, MAE pre-trained without labels", VIT),  # + init_from
}  # fmt: skip


def budget(n: int) -> dict[str, int]:
    """Validation after every epoch of the `n` images (at least 50 steps), a generous cap."""
    per_epoch = math.ceil(n / BATCH)
    eval_steps = max(50, per_epoch)
    return {"epoch_steps": eval_steps, "steps": max(3000, 150 * per_epoch)}


def run(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Train one config (resuming its folder) and return its report."""
    done = Path(cfg["out"]) / "report.json"
    if done.is_file():
        return json.loads(done.read_text())
    logging.getLogger("vitlab").info("== %s", name)
    return fit(build_config(None, cfg), resume="auto").report


def pretrain(out: Path, seed: int) -> tuple[Path, dict[str, Any]]:
    cfg = build_config("fashion_mnist_mae", {"out": str(out / f"mae-s{seed}"), "seed": seed})
    report = run(f"MAE pre-training, seed {seed}", cfg.to_dict())
    return Path(cfg.out) / "last.safetensors", report


def labelled(out: Path, arm: str, n: int, lr: float, seed: int, init: Path | None) -> dict:
    cfg = {**RECIPE, **ARMS[arm][1], **budget(n), "train_images": n, "lr": lr, "seed": seed}
    cfg["out"] = str(out / f"{arm}-n{n}-lr{lr:g}-s{seed}")
    if arm == "vit_mae":
        cfg["init_from"] = str(init)
    return run(cfg["out"], cfg)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench-pretrain"))
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        init, pre = pretrain(args.out, seed) if "vit_mae" in args.arms else (None, {})
        if pre:
            rows.append({"arm": "mae", "seed": seed, "val_loss": pre["val_loss"],
                         "steps": pre["steps"], "minutes": pre["wall_minutes"]})  # fmt: skip
        for n in args.sizes:
            for arm in args.arms:
                tried = [labelled(args.out, arm, n, lr, seed, init) for lr in args.lrs]
                best = max(tried, key=lambda r: r["best"].get("val_acc", -1))
                rows.append(_row(arm, n, seed, best, tried, args.lrs))
    _print(rows)
    cpu = platform.processor() or platform.machine()
    summary = {"machine": f"{cpu}, torch {torch.__version__}", "rows": rows,
               "minutes": (time.perf_counter() - t0) / 60}  # fmt: skip
    write_text(args.out / "results.json", json.dumps(summary, indent=2) + "\n")


def _row(arm: str, n: int, seed: int, best: dict, tried: list[dict], lrs: list[float]) -> dict:
    lr = lrs[tried.index(best)]
    return {
        "arm": arm, "n": n, "seed": seed, "lr": lr, "test_top1": 100 * best["top1"],
        "val_acc": 100 * best["best"]["val_acc"], "steps": best["steps"],
        "max_steps": best["max_steps"], "stopped": best["stopped"],
        "minutes": sum(r["wall_minutes"] for r in tried),
        "all_lrs": {f"{x:g}": round(100 * r["best"]["val_acc"], 2) for x, r in zip(lrs, tried)},
    }  # fmt: skip


def _print(rows: list[dict]) -> None:
    for r in rows:
        if r["arm"] == "mae":
            print(f"MAE pre-training (seed {r['seed']}): validation loss {r['val_loss']:.4f}, "
                  f"{r['steps']} steps, {r['minutes']:.1f} min")  # fmt: skip
    print(f"{'arm':<38} {'images':>7} {'seed':>4} {'lr':>7} {'test':>7} {'val':>7} "
          f"{'steps':>6} {'stopped':>8} {'min':>6}")  # fmt: skip
    for r in rows:
        if r["arm"] == "mae":
            continue
        print(f"{ARMS[r['arm']][0]:<38} {r['n']:>7} {r['seed']:>4} {r['lr']:>7g} "
              f"{r['test_top1']:>6.2f}% {r['val_acc']:>6.2f}% {r['steps']:>6} "
              f"{r['stopped']:>8} {r['minutes']:>6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
