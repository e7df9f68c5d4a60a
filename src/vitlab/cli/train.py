"""`vitlab train`: train a model from scratch on a dataset (paper section 4.1, Appendix B.1)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from vitlab.cli.common import add_config_flags, add_data_args, as_flag_error, parse_set
from vitlab.errors import ConfigError
from vitlab.train.config import (
    DATA_FIELDS,
    DISTILL_FLAGS,
    FLAGS,
    TrainConfig,
    accumulation_for,
    build_config,
    list_presets,
    merge,
    preset_path,
    read_yaml,
)

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
digits (scikit-learn's 8x8 digits; pip install 'vitlab[digits]'), synthetic, wds:PATTERN
(WebDataset shards KEY.jpg + KEY.cls, streamed, e.g. wds:/data/{split}-{000000..000127}.tar;
pip install 'vitlab[wds]').
"""

EPILOG = """\
examples:
  vitlab train --config fashion_mnist_vit                  the demo: a ViT on Fashion-MNIST
  vitlab train --config fashion_mnist_vit --set lr=1e-3 --set model_args.depth=6
  vitlab train --data imagefolder:photos --model vit_mini_p8 --epochs 30 --out runs/photos
  vitlab train --config fashion_mnist_vit --out runs/demo --resume auto   continue a run
  vitlab train --config fashion_mnist_deit --teacher runs/bit/last.safetensors
                                      the demo's ViT with a distillation token, a CNN teacher
  torchrun --nproc_per_node=2 -m vitlab train --config fashion_mnist_vit   two processes (DDP)

presets: {presets}

config keys (--set KEY=VALUE; model_args.KEY for the model's own fields):
{keys}
"""


def add_common(
    p: argparse.ArgumentParser, default_config: str | None, distill: bool = True
) -> None:
    """The flags `train`, `finetune` and `pretrain` share: --config, the data group, one flag
    per entry of `vitlab.train.config.FLAGS` (typed from its TrainConfig field; with `distill`
    also of DISTILL_FLAGS), and the run's handling."""
    p.add_argument(
        "--config",
        default=default_config,
        metavar="PRESET_OR_YAML",
        help=f"a preset name or a YAML file (default: {default_config or 'none'})",
    )
    add_data_args(p)
    add_config_flags(p, TrainConfig, {**FLAGS, **(DISTILL_FLAGS if distill else {})})
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


def config_keys() -> str:
    """Every TrainConfig key, wrapped for the help text."""
    import textwrap

    names = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
    return textwrap.fill(names, width=92, initial_indent="  ", subsequent_indent="  ")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG.format(presets=", ".join(list_presets()), keys=config_keys()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p, None)


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> TrainConfig:
    """Preset (or, resuming without --config, the run's own config.yaml), then flags, then
    --set (later wins); a default that changes the result is said out loud."""
    keys = (*DATA_FIELDS, *FLAGS, *DISTILL_FLAGS)  # pretrain has no distillation flags
    flags = {key: getattr(args, key, None) for key in keys}
    given = {k: v for k, v in flags.items() if v is not None and v is not False}  # switches: on
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    set_keys = parse_set(args.set)
    given = {k: v for k, v in {**given, **(extra or {})}.items() if k not in set_keys}
    overrides.update({**(extra or {}), **set_keys})  # --set wins over a flag
    base = args.config or _resumed_config(args)
    preset = read_yaml(preset_path(base)) if base else {}  # read once
    _keep_micro_batches(preset, overrides)
    try:
        cfg = build_config(None, merge(preset, overrides))
    except ConfigError as e:  # about a flag's value: said about the flag
        raise as_flag_error(e, given, {"init_from": "--from"}) from None
    if not cfg.init_from:  # the model's own fields: a wrong one is the only line printed
        from vitlab.models.registry import get_config

        get_config(cfg.model, **cfg.model_args)
    if cfg.data == "synthetic" and "data" not in overrides and "data" not in preset:
        log.warning(
            "no --data given: training on 'synthetic' (random patterns, for smoke tests); pass "
            "--data fashion-mnist, --data imagefolder:DIR or another dataset for real images"
        )
    return cfg


def _keep_micro_batches(preset: dict[str, Any], overrides: dict[str, Any]) -> None:
    """A --batch-size given without accum_steps keeps the preset's micro-batch size (finetune's
    paper recipe accumulates 16 micro-batches of 32; `--batch-size 8` becomes one of 8)."""
    if "batch_size" not in overrides or "accum_steps" in overrides:
        return
    if not isinstance(overrides["batch_size"], int) or overrides["batch_size"] < 1:
        return  # TrainConfig says what is wrong with it
    base = build_config(None, preset)
    if base.accum_steps == 1:
        return
    micro = base.batch_size // base.accum_steps
    overrides["accum_steps"] = accumulation_for(overrides["batch_size"], micro)
    log.info(
        "batch %d in %d accumulated micro-batch(es) (the preset's accum_steps %d made "
        "micro-batches of %d)",
        overrides["batch_size"], overrides["accum_steps"], base.accum_steps, micro,
    )  # fmt: skip


def _resumed_config(args: argparse.Namespace) -> str | None:
    """The config.yaml of the run `--resume` continues (`auto`: the one in --out; a path: that
    run's folder), so that resuming needs no --config; None when there is none."""
    if args.resume is None:
        return None
    if args.resume == "auto":
        folder = Path(args.out) if args.out else None
    else:
        path = Path(args.resume)
        folder = path if path.is_dir() else path.parent
    found = folder / "config.yaml" if folder is not None else None
    if found is not None and found.is_file():
        log.info("resuming with the run's own settings: %s", found)
        return str(found)
    return None


def print_result(result) -> None:
    from vitlab.evaluate import format_report
    from vitlab.train.state import RUN_FILES

    f = {role: result.run_dir / name for role, name in RUN_FILES.items()}
    r = result.report
    if r.get("objective"):  # pre-trained without labels: a loss, no accuracy
        loss = "none (no validation split)" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        print(f"pre-trained ({r['objective']}): validation loss {loss}, {r['steps']} steps, "
              f"{r['wall_minutes']:.1f} min")  # fmt: skip
        pictures = result.run_dir / "reconstructions"
        if pictures.is_dir():
            print(f"reconstructions: {pictures}/")
    else:
        print(format_report(r))
    confusion = f" (confusion matrix: {f['confusion']})" if f["confusion"].is_file() else ""
    print(f"report:      {f['report']}{confusion}")
    print(f"curves:      {f['curves']} (per epoch: {f['summary']})")
    also = f" (best on validation: {f['best']})" if f["best"].is_file() else ""
    print(f"checkpoint:  {f['last']}{also}")
    if result.report.get("weights") == str(f["best"]):
        print(f"the report is about {f['best']} (report_best)")
    if r.get("stopped") == "patience":
        print(f"early stop:  step {r['steps']} of at most {r['max_steps']} (patience)")
    elif r.get("stopped") == "cap":
        print(f"step cap:    reached {r['max_steps']} steps still improving; raise the cap")
    if r.get("objective"):
        print(f"fine-tune:   vitlab finetune --from {f['last']} --data ... (the encoder; "
              "a new head)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """`vitlab train`, and `vitlab finetune` (the same with --from)."""
    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts one over: pass one")
    init_from = getattr(args, "init_from", None)
    return run_config(args, config_from_args(args, {"init_from": init_from} if init_from else None))


def run_config(args: argparse.Namespace, cfg: TrainConfig) -> int:
    """Run `cfg` (train, finetune and pretrain) and print where its results are."""
    from vitlab.train.distributed import cleanup, is_main
    from vitlab.train.run import fit

    try:
        result = fit(cfg, resume=args.resume, overwrite=args.overwrite)
        if is_main():
            print_result(result)
    finally:
        cleanup()
    return 0
