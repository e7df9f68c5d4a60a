"""Time to accuracy: how many minutes of training a recipe needs to reach 88, 90 and 91% test top-1
on Fashion-MNIST, over several seeds, before and after (issue 26's benchmark).

    flock /tmp/vitlab-heavy.lock python benchmarks/time_to_accuracy.py          # before vs after
    python benchmarks/time_to_accuracy.py --seeds 0 \\
        after=fashion_mnist_vit "muon=fashion_mnist_vit,optimizer=muon"           # try a knob
    python benchmarks/time_to_accuracy.py --plot docs/time-to-accuracy.png        # the README's

A recipe is NAME=PRESET[,KEY=VALUE...]: a preset name or YAML file, with training keys set as
`--set` sets them. The default pair is `before` (benchmarks/recipes/fashion_mnist_vit_before.yaml,
the demo's recipe before this work) and `after` (configs/fashion_mnist_vit.yaml as shipped).

Every run evaluates the test split after every epoch (`watch_test`), outside the timed steps:
"training minutes" count the optimiser steps only (the first step's compilation included, as a
user pays it), never the evaluation passes. A target counts as reached at the first epoch whose
test top-1 is at or above it. The recipes take turns seed by seed, so that a slow spell of a
noisy machine falls on both; each run has its own folder under --out and a finished one is read
back, so the script can be stopped and run again. Medians are over the seeds, and only over
targets every seed reached (one seed's lucky run does not count). It prints one table and writes
OUT/results.json and a plot of test top-1 against training minutes. Say which machine ran it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from vitlab.cli.common import parse_set
from vitlab.figures import new_figure, save_figure
from vitlab.files import write_text
from vitlab.train.config import build_config
from vitlab.train.run import fit

HERE = Path(__file__).resolve().parent
BEFORE = HERE / "recipes" / "fashion_mnist_vit_before.yaml"
DEFAULT = [f"before={BEFORE}", "after=fashion_mnist_vit"]
TARGETS = (88.0, 90.0, 91.0)


def parse_recipe(spec: str) -> tuple[str, str, dict[str, Any]]:
    """NAME=PRESET[,KEY=VALUE...] -> (name, preset, overrides)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"a recipe is NAME=PRESET[,KEY=VALUE...], got {spec!r}")
    preset, *sets = rest.split(",")
    return name, preset, parse_set(sets)


def train(preset: str, overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """One run (resumed in `out`, or read back when finished): its report and history."""
    if not (out / "report.json").is_file():
        logging.getLogger("vitlab").info("== %s", out)
        fit(build_config(preset, {**overrides, "watch_test": True, "out": str(out)}),
            resume="auto")  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"report": report, "history": history}


def times_to(history: list[dict[str, Any]], targets: tuple[float, ...]) -> dict[str, Any]:
    """Training minutes at the first epoch whose test top-1 reached each target (None: never)."""
    out: dict[str, Any] = {}
    for t in targets:
        hit = next((h for h in history if 100 * h.get("test_acc", 0.0) >= t), None)
        out[f"{t:g}"] = hit["train_s"] / 60 if hit else None
    return out


def summarise(runs: list[dict[str, Any]], targets: tuple[float, ...]) -> dict[str, Any]:
    """Per recipe: the median minutes to each target (when every seed reached it, else how
    many did), the median final top-1 and training minutes."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["recipe"], []).append(r)
    table = {}
    for name, rs in by.items():
        row: dict[str, Any] = {"seeds": len(rs)}
        for t in targets:
            got = [r["minutes_to"][f"{t:g}"] for r in rs]
            reached = [g for g in got if g is not None]
            row[f"{t:g}"] = statistics.median(reached) if len(reached) == len(got) else None
            row[f"{t:g}_reached"] = len(reached)
        row["final_top1"] = statistics.median(r["final_top1"] for r in rs)
        row["train_min"] = statistics.median(r["train_min"] for r in rs)
        table[name] = row
    return table


def plot(runs: list[dict[str, Any]], targets: tuple[float, ...], path: Path, title: str) -> Path:
    fig, (ax,) = new_figure(width=6.4, height=4.2)
    colours: dict[str, str] = {}
    labelled: set[str] = set()
    for r in runs:
        c = colours.setdefault(r["recipe"], f"C{len(colours)}")
        xs = [h["train_s"] / 60 for h in r["curve"]]
        ys = [100 * h["test_acc"] for h in r["curve"]]
        label = None if r["recipe"] in labelled else r["recipe"]  # one legend entry each
        labelled.add(r["recipe"])
        ax.plot(xs, ys, color=c, alpha=0.8, marker=".", lw=1.2, label=label)
    for t in targets:
        ax.axhline(t, color="0.6", lw=0.8, ls=":")
    ax.set_ylim(max(70.0, min(targets) - 8), None)
    ax.set_xlabel("training minutes (optimiser steps only)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("recipes", nargs="*", default=DEFAULT,
                   help="NAME=PRESET[,KEY=VALUE...] (default: before and after)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--targets", type=float, nargs="+", default=list(TARGETS),
                   help="test top-1 targets in %% (default: 88 90 91)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override every recipe (e.g. epochs=2 for a quick look)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs/tta"), help="parent of the runs")
    p.add_argument("--plot", type=Path, help="also write the plot here (e.g. docs/...png)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipes = [parse_recipe(s) for s in args.recipes]
    common, targets = parse_set(args.set), tuple(args.targets)
    t0 = time.perf_counter()
    runs = []
    for seed in args.seeds:
        for name, preset, overrides in recipes:
            out = args.out / name / f"s{seed}"
            done = train(preset, {**overrides, **common, "seed": seed}, out)
            r, hist = done["report"], done["history"]
            curve = [{"epoch": h["epoch"], "train_s": h["train_s"], "test_acc": h["test_acc"]}
                     for h in hist if "test_acc" in h and "train_s" in h]  # fmt: skip
            runs.append({
                "recipe": name, "preset": preset, "overrides": overrides, "seed": seed,
                "final_top1": 100 * r["top1"], "train_min": r["train_minutes"],
                "wall_min": r["wall_minutes"], "epochs": r["epochs"], "img_s": r["img_s"],
                "minutes_to": times_to(curve, targets), "curve": curve,
            })  # fmt: skip
    table = summarise(runs, targets)
    _print(table, targets)
    results = {"machine": machine(), "common": common, "targets": targets, "table": table,
               "runs": runs, "minutes": (time.perf_counter() - t0) / 60}  # fmt: skip
    write_text(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    title = f"Fashion-MNIST, {len(args.seeds)} seed(s) each; {machine()}"
    for path in [args.out / "time_to_accuracy.png", *([args.plot] if args.plot else [])]:
        print(f"wrote {plot(runs, targets, path, title)}")


def _print(table: dict[str, dict], targets: tuple[float, ...]) -> None:
    print(f"\nTime to accuracy on Fashion-MNIST test, median training minutes; {machine()}")
    head = "".join(f"{'to ' + format(t, 'g') + '%':>10}" for t in targets)
    print(f"{'recipe':<16}{'seeds':>6}{head}{'final top-1':>13}{'train min':>11}")
    for name, row in table.items():
        cells = "".join(
            f"{row[f'{t:g}']:>10.2f}" if row[f"{t:g}"] is not None
            else f"{str(row[f'{t:g}_reached']) + '/' + str(row['seeds']) + ' hit':>10}"
            for t in targets
        )  # fmt: skip
        print(
            f"{name:<16}{row['seeds']:>6}{cells}{row['final_top1']:>12.2f}%{row['train_min']:>11.2f}"
        )


if __name__ == "__main__":
    main()
