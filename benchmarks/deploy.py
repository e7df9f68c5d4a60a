"""Deployment figures on this machine: ONNX Runtime fp32 and int8 beside timm's fp32 eager model,
and what int8 costs in accuracy on real data.

    python benchmarks/deploy.py speed             # ViT-Ti/16, S/16, B/16 at 224, batch 1 and 16
    python benchmarks/deploy.py speed --models vit_s16 --batches 16 --iters 20
    python benchmarks/deploy.py accuracy runs/demo/last.safetensors runs/bit/last.safetensors

`speed`: per model, one process holds every path with the same random weights and times them
in turns (the order reversed every round), so all see the same machine; img/s is the median
batch time, and every figure is also given as a ratio to timm fp32 eager. The paths:

    timm         timm's VisionTransformer, fp32, eager, under torch.inference_mode
    vitlab       vitlab's model, fp32, eager, packed weights (as vitlab eval/predict run it)
    onnx         `vitlab convert --to onnx`: ONNX Runtime, fp32
    int8-dyn     `... --quantize int8`: dynamic
    int8-static  `... --quantize int8 --calibrate DATA`: static (calibrated here on random
                 images, which sets the same kernels; accuracy is the `accuracy` command's)
    naive-fp32   torch.onnx.export of the timm model, ONNX Runtime with default settings
    naive-int8   that file through onnxruntime's quantize_dynamic with default settings

Every ONNX Runtime session here, the naive ones too, has its threads sleep when idle: by default
they spin after each run, and in a process that takes turns between models that spinning ran
into the next model's time (ViT-S/16 at batch 1: timm 10 img/s beside spinning sessions, 18
beside sleeping ones), which would make the comparison measure the order of the turns.

`accuracy`: each checkpoint exported, quantised dynamically and statically (calibrated on 256
training images), and all three evaluated on the test split of the checkpoint's dataset
(`--data`, default fashion-mnist): top-1 and the top-1 agreement with fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vitlab
from vitlab.bench import BenchSpec, time_interleaved
from vitlab.data.datasets import load_data
from vitlab.data.loader import build_loader
from vitlab.data.transforms import normalize
from vitlab.deploy import calibration_batches
from vitlab.errors import ConfigError
from vitlab.evaluate import eval_augmentation
from vitlab.runtime.device import cpu_info, keep_freed_memory
from vitlab.runtime.kernels import PackedWeights
from vitlab.weights.onnx import OnnxModel, export_onnx
from vitlab.weights.quantize import quantize_onnx
from vitlab.weights.timm import timm_twin

PATHS = ("timm", "vitlab", "onnx", "int8-dyn", "int8-static", "naive-fp32", "naive-int8")


# ------------------------------------------------------------------------------------- speed
def build_paths(name: str, folder: Path, img: int) -> dict[str, Callable[[torch.Tensor], Any]]:
    """Every path of the module docstring for variant `name`, as x -> logits."""
    torch.manual_seed(0)
    model = vitlab.create_model(name, img_size=img).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.02)  # the zero head would make every top-1 agree
    timm_model = timm_twin(model).eval()
    export_onnx(model, folder / "fp32.onnx")
    quantize_onnx(folder / "fp32.onnx", folder / "dyn.onnx", method="dynamic")
    gen = np.random.default_rng(0)
    calib = [gen.standard_normal((16, 3, img, img), dtype=np.float32) for _ in range(4)]
    quantize_onnx(folder / "fp32.onnx", folder / "static.onnx", method="static", calibration=calib)
    naive = _naive_paths(timm_model, folder, img)
    packs = PackedWeights()

    def eager(m: torch.nn.Module, pack: bool) -> Callable[[torch.Tensor], Any]:
        def run(x: torch.Tensor) -> Any:
            with torch.inference_mode():
                if pack:
                    with packs:
                        return m(x)
                return m(x)

        return run

    return {
        "timm": eager(timm_model, False),
        "vitlab": eager(model, True),
        "onnx": OnnxModel(folder / "fp32.onnx"),
        "int8-dyn": OnnxModel(folder / "dyn.onnx"),
        "int8-static": OnnxModel(folder / "static.onnx"),
        **naive,
    }


def _naive_paths(timm_model: torch.nn.Module, folder: Path, img: int) -> dict[str, Callable]:
    """The path people take first: torch.onnx.export of timm's model, onnxruntime's
    quantize_dynamic with its defaults, sessions with default options."""
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_dynamic

    path = folder / "timm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            timm_model,
            (torch.randn(2, 3, img, img),),
            str(path),
            input_names=["x"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    quantize_dynamic(str(path), str(folder / "timm-int8.onnx"))
    out = {}
    options = ort.SessionOptions()  # the defaults, but for spinning (see the module docstring)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, file in (("naive-fp32", path), ("naive-int8", folder / "timm-int8.onnx")):
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor, s: Any = session) -> Any:
            return torch.from_numpy(s.run(None, {"x": x.numpy()})[0])

        out[key] = run
    return out


def speed(args: argparse.Namespace) -> dict[str, Any]:
    keep_freed_memory()
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            paths = build_paths(name, Path(tmp), 224)
            print(f"{name}: exported and quantised in {time.perf_counter() - t0:.0f} s", flush=True)
            for batch in args.batches:
                rows.append(_time(name, paths, batch, args))
                _print_row(rows[-1])
    return {"machine": cpu_info(), "threads": torch.get_num_threads(), "rows": rows}


def _time(name: str, paths: dict[str, Callable], batch: int, args: argparse.Namespace) -> dict:
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ref = paths["timm"](x)
    agree = {k: float((f(x).argmax(-1) == ref.argmax(-1)).float().mean()) for k, f in paths.items()}
    steps = {k: (lambda f=f: f(x)) for k, f in paths.items()}
    spec = BenchSpec(warmup=args.warmup, iters=args.iters)
    times, _ = time_interleaved(steps, spec, torch.device("cpu"))
    img_s = {k: batch / statistics.median(t) for k, t in times.items()}
    base = img_s["timm"]
    return {
        "model": name,
        "batch": batch,
        "img_s": img_s,
        "vs_timm": {k: v / base for k, v in img_s.items()},
        "top1_agreement_with_timm": agree,
        "iters": args.iters,
    }


def _print_row(row: dict) -> None:
    print(f"  batch {row['batch']}: " + "  ".join(
        f"{k} {row['img_s'][k]:.1f} img/s ({row['vs_timm'][k]:.2f}x)" for k in PATHS
    ), flush=True)  # fmt: skip


def speed_table(result: dict) -> str:
    """The README's table: img/s and the ratio to timm fp32 for every path."""
    head = "| model | batch | " + " | ".join(PATHS) + " |"
    lines = [head, "| --- | ---: |" + " ---: |" * len(PATHS)]
    for r in result["rows"]:
        cells = [f"{r['img_s'][k]:.1f} ({r['vs_timm'][k]:.2f}x)" for k in PATHS]
        lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- accuracy
def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for ckpt in args.checkpoints:
        model = vitlab.load_checkpoint(ckpt).float().eval()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            export_onnx(model, folder / "fp32.onnx")
            files = {"onnx fp32": "fp32", "int8 dynamic": "dyn", "int8 static": "static"}
            try:
                quantize_onnx(folder / "fp32.onnx", folder / "dyn.onnx", method="dynamic")
            except ConfigError as e:  # a ResNet: no linear layers for dynamic int8
                print(f"{ckpt}: no dynamic int8 ({e})")
                del files["int8 dynamic"]
            calib = calibration_batches(model, args.data, args.calibrate_images)
            quantize_onnx(folder / "fp32.onnx", folder / "static.onnx", method="static",
                          calibration=calib, calibration_note=args.data)  # fmt: skip
            runners = {"torch fp32": model}
            runners |= {k: OnnxModel(folder / f"{f}.onnx") for k, f in files.items()}
            rows.append(_score(str(ckpt), runners, args.data))
        _print_accuracy(rows[-1])
    return {"machine": cpu_info(), "data": args.data, "rows": rows}


def _score(name: str, runners: dict[str, Any], data_spec: str) -> dict:
    """Test top-1 of every runner and its top-1 agreement with PyTorch fp32."""
    model = runners["torch fp32"]
    data = load_data(data_spec)
    loader, _ = build_loader(data.test, eval_augmentation(model), 250)
    preds: dict[str, list[torch.Tensor]] = {k: [] for k in runners}
    labels = []
    with torch.inference_mode():
        for x, y, _ in loader:
            x = normalize(x, tuple(model.cfg.mean), tuple(model.cfg.std))
            for k, r in runners.items():
                preds[k].append(r(x).argmax(-1))
            labels.append(y)
    y = torch.cat(labels)
    p = {k: torch.cat(v) for k, v in preds.items()}
    return {
        "checkpoint": name,
        "images": len(y),
        "top1": {k: float((v == y).float().mean()) for k, v in p.items()},
        "agreement": {k: float((v == p["torch fp32"]).float().mean()) for k, v in p.items()},
    }


def _print_accuracy(row: dict) -> None:
    print(f"{row['checkpoint']} ({row['images']} test images)")
    for k, top1 in row["top1"].items():
        print(f"  {k:13s} top-1 {100 * top1:6.2f}%   agreement with fp32 "
              f"{100 * row['agreement'][k]:6.2f}%")  # fmt: skip


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("speed", help="img/s of every path, beside timm fp32")
    s.add_argument("--models", nargs="+", default=["vit_ti16", "vit_s16", "vit_b16"])
    s.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    s.add_argument("--iters", type=int, default=12)
    s.add_argument("--warmup", type=int, default=3)
    a = sub.add_parser("accuracy", help="test top-1 of fp32 and int8 on real data")
    a.add_argument("checkpoints", nargs="+", type=Path)
    a.add_argument("--data", default="fashion-mnist")
    a.add_argument("--calibrate-images", type=int, default=256)
    for q in (s, a):
        q.add_argument("--json", type=Path, help="also write the figures there")
    args = p.parse_args(argv)
    result = speed(args) if args.command == "speed" else accuracy(args)
    if args.command == "speed":
        print(speed_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
