"""`vitlab eval`: a checkpoint's accuracy on a dataset split."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitlab.cli.common import add_checkpoint_args, add_device_arg, load_model

HELP = "evaluate a checkpoint: top-1, top-5, per-class accuracy, confusion matrix"

DESCRIPTION = """\
Evaluate a checkpoint on a dataset split with the model's own preprocessing (resolution,
mean/std and crop come from the checkpoint). Prints top-1 and top-5 accuracy and the per-class
accuracy; with --out, writes report.json and confusion.png there. The checkpoint's classes must
match the dataset's (fine-tune it first otherwise).
"""

EPILOG = """\
examples:
  vitlab eval --checkpoint runs/demo/last.safetensors --data fashion-mnist
  vitlab eval --checkpoint runs/demo/best.safetensors --data fashion-mnist --out runs/demo/eval
  vitlab eval --checkpoint model.safetensors --data imagefolder:photos --split val
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_args(p, help="the weights to evaluate (any file vitlab.load_checkpoint reads)")
    p.add_argument("--data", required=True, metavar="NAME[:PATH]", help="dataset (as for train)")
    p.add_argument("--data-root", metavar="DIR", help="where the dataset's files are")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="which split (default: test)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write report.json and confusion.png here"
    )
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from vitlab.evaluate import evaluate_checkpoint, format_report

    report = evaluate_checkpoint(
        load_model(args),
        args.data,
        args.data_root,
        args.split,
        args.batch_size,
        args.out,
        download=args.download,
        device=args.device,
        name=str(args.checkpoint),
    )
    print(format_report(report))
    for name, acc in report["per_class"].items():
        print(f"  {name:<24} {100 * acc:6.2f}%")
    if args.out is not None:
        print(f"report: {args.out / 'report.json'}  confusion matrix: {args.out / 'confusion.png'}")
    return 0
