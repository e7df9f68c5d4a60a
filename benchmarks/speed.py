"""vitlab's speed beside timm's on this machine: one row per model, mode and precision.

Each row builds vitlab's model and timm's identical one with the same weights, times them in
turns in one process (`vitlab.bench.run_bench` with `vs_timm=True`) and reports the medians,
the ratio and the utilisation of the matmul peak measured in the same run.

    python benchmarks/speed.py                      # the whole table (about 15 min on 2 cores)
    python benchmarks/speed.py --models vit_ti16 --out speed.json   # some rows, merged into
    python benchmarks/speed.py --show speed.json    # a file that collects them; print it

Rows: ViT-Ti/16, S/16 and B/16 at 224 px (inference and training, fp32 and bf16, batch 16),
and the demo's Fashion-MNIST variant at 28 px (vit_micro_p7, 1 channel, training, batch 256).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from vitlab.bench import BenchSpec, round_floats, run_bench
from vitlab.progress import progress_bar
from vitlab.runtime.device import cpu_info, pick_device

IMAGENET_MODELS = ["vit_ti16", "vit_s16", "vit_b16"]
FMNIST = ("vit_micro_p7", {"img_size": 28, "in_chans": 1, "batch": 256})  # the demo's shape


def all_specs(args: argparse.Namespace) -> list[BenchSpec]:
    """The table's rows, filtered by --models, --modes and --precisions."""
    specs = []
    for model in IMAGENET_MODELS:
        for mode in ("infer", "train"):
            for precision in ("fp32", "bf16"):
                specs.append(BenchSpec(model=model, mode=mode, precision=precision, batch=16))
    for precision in ("fp32", "bf16"):
        name, kw = FMNIST
        specs.append(BenchSpec(model=name, mode="train", precision=precision, **kw))
    keep = []
    for s in specs:
        if args.models and s.model not in args.models:
            continue
        if s.mode not in args.modes or s.precision not in args.precisions:
            continue
        s.vs_timm, s.compile, s.device = True, args.compile, args.device
        s.iters, s.warmup = args.iters, max(args.warmup, 1 if args.compile else 0)
        keep.append(s)
    return keep


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    import timm

    info = cpu_info()
    out = {
        "cpu": info["model"],
        "cores": info["cores"],
        "avx512_bf16": info["avx512_bf16"],
        "amx_bf16": info["amx_bf16"],
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def row_key(r: dict[str, Any]) -> str:
    return f"{r['model']}@{r['img_size']}/{r['mode']}/{r['precision']}/{r['compile']}"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    head = (
        "| model | px | batch | mode | precision | vitlab img/s | timm img/s | ratio | "
        "GFLOP/img | vitlab util. | timm util. | peak GFLOP/s |\n"
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for r in rows:
        comp = " (compiled)" if r["compile"] else ""
        lines.append(
            f"| {r['model']} | {r['img_size']} | {r['batch']} | {r['mode']}{comp} | "
            f"{r['precision']} | {r['img_s']:.1f} | {r['timm_img_s']:.1f} | "
            f"**{r['ratio']:.2f}x** | {r['gflops_per_img']:.2f} | {r['utilization']:.0%} | "
            f"{r['timm_utilization']:.0%} | {r['peak_gflops']:.0f} |"
        )
    return "\n".join(lines)


def header(m: dict[str, Any]) -> str:
    feats = ", ".join(f"{k.upper()} {'yes' if m[k] else 'no'}" for k in ("avx512_bf16", "amx_bf16"))
    where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores"
    load = ", ".join(f"{x:.2f}" for x in m["load_average"])
    return (
        f"Machine: {where} ({feats}); torch {m['torch']}, timm {m['timm']}, "
        f"{m['threads']} threads; load average before the run: {load}"
    )


def load_results(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {"machine": None, "rows": {}}
    return json.loads(path.read_text())


def save_results(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a temporary file, then a rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="*", help="only these rows (e.g. vit_ti16 vit_micro_p4)")
    p.add_argument("--modes", nargs="*", default=["infer", "train"], choices=["infer", "train"])
    p.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--iters", type=int, default=7, help="timed steps per model and row")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", type=Path, help="JSON file collecting rows across runs")
    p.add_argument("--show", type=Path, help="print the table held in this file and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        data = load_results(args.show)
        print(header(data["machine"]) + "\n\n" + table(list(data["rows"].values())))
        return 0
    device = pick_device(args.device)
    data = load_results(args.out)
    data["machine"] = machine(device)
    print(header(data["machine"]), flush=True)
    specs = all_specs(args)
    fresh = []
    for spec in progress_bar(specs, desc="rows", unit="row"):
        r = round_floats(run_bench(spec).to_dict())
        r["load_average_after"] = list(os.getloadavg())
        fresh.append(r)
        data["rows"][row_key(r)] = r
        if args.out:
            save_results(args.out, data)
    print(table(fresh))
    if args.out:
        print(f"\n{len(fresh)} rows measured; {len(data['rows'])} rows in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
