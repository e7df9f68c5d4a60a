"""`vitlab train`: train a model from scratch on a dataset (paper section 4.1, Appendix B.1)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from vitlab.cli.common import parse_set
from vitlab.train.config import TrainConfig, build_config, list_presets

log = logging.getLogger("vitlab")

HELP = "train a model from scratch (resumable, multi-process with torchrun)"

DESCRIPTION = """\
Train a model from scratch. Settings come from a preset (--config), then the flags below, then
any number of --set key=value overrides (any TrainConfig key; unknown keys and wrong types are
reported). The run directory (--out) receives config.yaml, metrics.jsonl, summary.csv,
curves.png, last.safetensors and, with a validation split, best.safetensors (the epoch of best
validation accuracy; without one the test split is only watched), the resumable last.state.pt,
report.json and confusion.png. Load the checkpoints with vitlab.load_checkpoint.

datasets (--data): fashion-mnist, imagefolder:PATH, cifar10, cifar100, pets, flowers102,
digits, synthetic, wds:PATTERN (WebDataset shards KEY.jpg + KEY.cls, streamed, e.g.
wds:/data/{split}-{000000..000127}.tar; pip install 'vitlab[wds]').
"""

EPILOG = """\
examples:
  vitlab train --config fashion_mnist_vit                  the demo: a ViT on Fashion-MNIST
  vitlab train --config fashion_mnist_vit --set lr=1e-3 --set model_args.depth=6
  vitlab train --data imagefolder:photos --model vit_mini_p8 --epochs 30 --out runs/photos
  vitlab train --config fashion_mnist_vit --out runs/demo --resume auto   continue a run
  torchrun --nproc_per_node=2 -m vitlab train --config fashion_mnist_vit   two processes (DDP)

presets: {presets}
"""

# The flags every training command shares that set the TrainConfig key of the same name.
FLAG_KEYS = ("model", "data", "data_root", "epochs", "steps", "batch_size", "lr", "out",
             "precision", "workers", "strategy", "seed", "img_size")  # fmt: skip


def add_common(p: argparse.ArgumentParser, default_config: str | None) -> None:
    """The flags `train` and `finetune` share."""
    p.add_argument(
        "--config",
        default=default_config,
        metavar="PRESET_OR_YAML",
        help=f"a preset name or a YAML file (default: {default_config or 'none'})",
    )
    p.add_argument("--model", help="model variant (`vitlab models` lists them)")
    p.add_argument(
        "--data", metavar="NAME[:PATH]", help="dataset, e.g. fashion-mnist or imagefolder:DIR"
    )
    p.add_argument("--data-root", metavar="DIR", help="where the dataset's files are (or go)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--epochs", type=float, help="training epochs")
    p.add_argument("--steps", type=int, help="optimiser steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size (all processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--img-size", type=int, help="input resolution (default: the model's)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16", "auto"],
        help="bf16 autocast; fp16 needs a GPU; auto: bf16 where it is measured faster here",
    )
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--workers", type=int, help="data-loading processes (0: in the main one)")
    p.add_argument(
        "--strategy", choices=["ddp", "fsdp"], help="multi-process strategy under torchrun"
    )
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="auto|PATH",
        help="continue the run in --out (auto, the default when given without a "
        "value) or the one at PATH",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out that already holds a run (that run's checkpoints and "
        "reports are removed); without it such a directory is refused",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set label_smoothing=0.1",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG.format(presets=", ".join(list_presets())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p, None)


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> TrainConfig:
    """Preset, then flags, then --set (later wins)."""
    flags = {key: getattr(args, key) for key in FLAG_KEYS}
    overrides = {k: v for k, v in flags.items() if v is not None}  # flags not given
    if args.download:
        overrides["download"] = True
    if args.compile:
        overrides["compile"] = True
    overrides.update(extra or {})
    overrides.update(parse_set(args.set))
    return build_config(args.config, overrides)


def print_result(result) -> None:
    from vitlab.evaluate import format_report
    from vitlab.train.state import RUN_FILES

    if not result.report:
        return
    f = {role: result.run_dir / name for role, name in RUN_FILES.items()}
    print(format_report(result.report))
    print(f"report:      {f['report']} (confusion matrix: {f['confusion']})")
    print(f"curves:      {f['curves']} (per epoch: {f['summary']})")
    also = f" (best on validation: {f['best']})" if f["best"].is_file() else ""
    print(f"checkpoint:  {f['last']}{also}")


def run(args: argparse.Namespace) -> int:
    """`vitlab train`, and `vitlab finetune` (the same with --from)."""
    from vitlab.train.distributed import cleanup, is_main
    from vitlab.train.run import fit

    init_from = getattr(args, "init_from", None)
    cfg = config_from_args(args, {"init_from": init_from} if init_from else None)
    try:
        result = fit(cfg, resume=args.resume, overwrite=args.overwrite)
        if is_main():
            print_result(result)
    finally:
        cleanup()
    return 0
