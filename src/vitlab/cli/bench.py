"""`vitlab bench`: throughput, FLOPs and utilisation of a model, optionally beside timm's."""

from __future__ import annotations

import argparse
import json

from vitlab.cli.common import number
from vitlab.errors import ConfigError

HELP = (
    "measure img/s, GFLOP/s and utilisation, in PyTorch or ONNX Runtime (fp32, int8), beside timm"
)

DESCRIPTION = """\
Time a model on random data: after a few warm-up steps, the median of repeated timed steps
gives images per second. The FLOPs per image are counted from the model's config (every
matmul, attention included; a training step counts 3x the forward, less the image's
gradient), and utilisation is the achieved FLOP/s over the peak of a large matmul in the same
precision, measured in the same run (on NVIDIA A100/H100/H200 also over the data-sheet peak).

Inference runs the weights in the chosen precision under torch.inference_mode; training runs a
full step (forward, cross-entropy, backward, AdamW) with fp32 weights and bf16/fp16 autocast.
With --vs timm, timm's VisionTransformer is built with the same architecture and the same
weights, and the two models take turns in the same process so that both see the same machine.

--backend onnx exports the model to ONNX first and times it in ONNX Runtime (CPU provider,
fp32); onnx-int8 quantises that export to int8 as `vitlab convert --to onnx --quantize int8`
does (dynamic; --int8 static calibrates on random images, which sets the same kernels).
--checkpoint times a file instead of a fresh variant: a .onnx file runs as it is, and timm's
twin then gets random weights of the same architecture (the speed is the same).
"""

EPILOG = """\
examples:
  vitlab bench --model vit_s16                          ViT-S/16 inference, fp32, batch 16
  vitlab bench --model vit_b16 --precision bf16 --vs timm
  vitlab bench --model vit_micro_p4 --img-size 28 --in-chans 1 --batch 128 --mode train
  vitlab bench --model vit_test --iters 2 --json        one JSON object on stdout
  vitlab bench --model vit_ti16 --backend onnx-int8 --vs timm
  vitlab bench --checkpoint demo-int8.onnx --batch 1 --vs timm

Hold the machine still while measuring: other busy processes lower every figure.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="vit_s16", help="variant name (default vit_s16)")
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="time this model file instead (any checkpoint vitlab reads, .onnx included)",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnx", "onnx-int8", "all"],
        default="torch",
        help="PyTorch, or the model exported and run by ONNX Runtime, fp32 or int8; all: every "
        "path available here (PyTorch fp32/bf16 eager and compiled, ONNX Runtime fp32/int8, "
        "OpenVINO fp32/bf16/int8) in turns beside timm fp32, the fastest named (default torch)",
    )
    p.add_argument(
        "--int8",
        choices=["dynamic", "static"],
        default="dynamic",
        help="how onnx-int8 quantises: dynamic, as `vitlab convert --quantize int8` does, or "
        "static (activation ranges calibrated on random images) (default dynamic)",
    )
    p.add_argument("--batch", type=number(int, 1), default=16, help="images per step (default 16)")
    p.add_argument(
        "--img-size", type=number(int, 1), help="input resolution (default: the variant's)"
    )
    p.add_argument(
        "--in-chans", type=number(int, 1), help="input channels (default: the variant's)"
    )
    p.add_argument(
        "--mode",
        choices=["infer", "train"],
        default="infer",
        help="inference, or a full training step (default infer)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16", "auto"],
        default="fp32",
        help="number format of the matmuls; auto: bf16 where its matmuls are measured faster "
        "here, as predict, eval and serve choose (default fp32)",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model(s) first (fullgraph)"
    )
    p.add_argument(
        "--vs",
        choices=["timm"],
        help="also time this library's identical model, interleaved, and print the ratio",
    )
    p.add_argument(
        "--iters", type=number(int, 1), default=10, help="timed steps per model (default 10)"
    )
    p.add_argument(
        "--warmup", type=number(int, 0), default=2, help="untimed steps first (default 2)"
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto: the GPU when there is one"
    )
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (by default freed large blocks are kept for "
        "reuse, which saves page faults on CPUs)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from vitlab.bench import BenchSpec, format_result, round_floats, run_bench
    from vitlab.progress import progress_bar

    spec = BenchSpec(
        model=args.model,
        checkpoint=args.checkpoint,
        backend=args.backend,
        int8=args.int8,
        batch=args.batch,
        img_size=args.img_size,
        in_chans=args.in_chans,
        mode=args.mode,
        precision=args.precision,
        compile=args.compile,
        vs_timm=args.vs == "timm",
        warmup=args.warmup,
        iters=args.iters,
        device=args.device,
        keep_freed_memory=not args.default_malloc,
    )

    def progress(rounds):
        return progress_bar(rounds, total=spec.iters, desc="timing", unit="round")

    if args.backend == "all":
        from vitlab.bench import bench_all, format_all

        asked = {"--mode train": args.mode != "infer", "--vs": args.vs,
                 "--precision": args.precision != "fp32", "--compile": args.compile}  # fmt: skip
        given = [flag for flag, on in asked.items() if on]
        if given:
            raise ConfigError(
                f"--backend all times inference in every precision, eager and compiled, beside "
                f"timm fp32: leave out {', '.join(given)}"
            )
        spec.backend = "torch"
        every = bench_all(spec, progress=progress)
        print(json.dumps(every.to_dict()) if args.json else format_all(every))
        return 0
    result = run_bench(spec, progress=progress)
    if args.json:
        print(json.dumps(round_floats(result.to_dict())))
    else:
        print(format_result(result))
    return 0
