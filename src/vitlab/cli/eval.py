"""`vitlab eval`: a checkpoint's accuracy on a dataset split."""

from __future__ import annotations

import argparse
import logging

from vitlab.cli.common import (
    add_checkpoint_args,
    add_data_args,
    add_device_arg,
    add_precision_arg,
    load_model,
    number,
    out_dir,
)

log = logging.getLogger("vitlab")

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
  vitlab eval --checkpoint runs/demo/last.safetensors --data fashion-mnist --flip
                            each test image averaged with its mirror (test-time flips)
  vitlab eval --checkpoint m.safetensors --data imagefolder:photos --split val --val-split 0.2
                            the images a training run with val_split 0.2 (and seed 0) held out
  vitlab eval --checkpoint runs/demo/best.safetensors --data fashion-mnist --split val
                            the images that run validated on (its config.yaml says which)
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
    add_data_args(p, "dataset (as for train)", required=True)
    p.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="which split (default: test)",
    )
    p.add_argument(
        "--batch-size", type=number(int, 1), default=256, help="images per batch (default 256)"
    )
    p.add_argument(
        "--out", type=out_dir, metavar="DIR", help="write report.json and confusion.png here"
    )
    p.add_argument(
        "--val-split",
        type=number(float, 0),
        metavar="F",
        help="hold out this fraction of the training images as --split val, as a training run "
        "with val_split F does (for datasets without a validation split of their own; default: "
        "the val_split of the run's config.yaml beside the checkpoint, else 0)",
    )
    p.add_argument(
        "--seed",
        type=number(int),
        help="the seed of that hold-out (default: the run's seed from its config.yaml, else 0)",
    )
    p.add_argument(
        "--flip",
        action="store_true",
        help="test-time flips: average each image's logits with its mirror's (for data whose "
        "labels survive a left-right mirror, such as Fashion-MNIST; not digits or text)",
    )
    add_precision_arg(p)
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from vitlab.evaluate import evaluate_checkpoint, format_report
    from vitlab.runtime.device import model_device

    model = load_model(args)  # on --device (an .onnx file: on the CPU)
    val_split, seed = holdout(args)
    report = evaluate_checkpoint(
        model,
        args.data,
        args.data_root,
        args.split,
        args.batch_size,
        args.out,
        download=args.download,
        device=str(model_device(model)),
        name=str(args.checkpoint),
        val_split=val_split,
        seed=seed,
        flip=args.flip,
        precision=args.precision,
    )
    print(format_report(report))
    for name, acc in report["per_class"].items():
        print(f"  {name:<24} {100 * acc:6.2f}%")
    if args.out is not None:
        print(f"report: {args.out / 'report.json'}  confusion matrix: {args.out / 'confusion.png'}")
    return 0


def holdout(args: argparse.Namespace) -> tuple[float, int]:
    """The validation hold-out: --val-split and --seed where given, else those of the training
    run that wrote the checkpoint (its config.yaml), so `--split val` scores the images that run
    validated on; else none (0, seed 0)."""
    from vitlab.evaluate import run_holdout

    run = run_holdout(args.checkpoint) if args.val_split is None or args.seed is None else None
    val_split = args.val_split if args.val_split is not None else (run[0] if run else 0.0)
    seed = args.seed if args.seed is not None else (run[1] if run else 0)
    if run and args.val_split is None and val_split:
        log.info("validation hold-out of the run's config.yaml: val_split %g, seed %d", val_split,
                 seed)  # fmt: skip
    return val_split, seed
