"""What the subcommands share: the checkpoint/source arguments, `--set key=value` parsing, and
loading a checkpoint onto a device. Nothing here imports torch at module level, so building the
parser (`vitlab --help`) stays instant; the library is imported when a command runs."""

from __future__ import annotations

import argparse
import re
from typing import Any

from vitlab.errors import ConfigError
from vitlab.weights.formats import AUTO, SOURCE_NAMES

SOURCE_CHOICES = [AUTO, *SOURCE_NAMES]


def add_checkpoint_args(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--checkpoint PATH` (required) and `--source` (the registry's names, or auto)."""
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help=help
        or "any file `vitlab.load_checkpoint` reads: vitlab .safetensors, timm state "
        "dicts, Google .npz, Hugging Face directories, torchvision state dicts, hub references",
    )
    p.add_argument(
        "--source",
        default=AUTO,
        choices=SOURCE_CHOICES,
        help="the checkpoint's ecosystem (default: detected from the file)",
    )


def add_device_arg(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument(
        "--device", default=default, help=f"cpu, cuda, cuda:N or auto (default {default})"
    )


def load_model(args: argparse.Namespace, device: str | None = None) -> Any:
    """The checkpoint of `args` (its --checkpoint and --source), on `device` (else
    `args.device`), checked: a one-line error for a device that is not there."""
    from vitlab.runtime import pick_device
    from vitlab.weights.checkpoint import load_checkpoint

    dev = pick_device(device or getattr(args, "device", "cpu"))
    return load_checkpoint(args.checkpoint, source=args.source).to(dev)


# ------------------------------------------------------------------------------ --set values
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_value(raw: str) -> Any:
    """A `--set` value as YAML reads it (numbers, true/false, null, [lists]), with floats in
    any notation: YAML 1.1 reads "3e-3" as a string, and here it is 0.003."""
    import yaml

    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        value = float(value)
    return value


def parse_set(items: list[str], nested: bool = True) -> dict[str, Any]:
    """`["lr=3e-3", "model_args.depth=4"]` -> {"lr": 0.003, "model_args": {"depth": 4}}: one
    parser for every `--set`. With `nested=False` (model-config fields) a dotted key is an
    error."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set takes key=value, got {item!r} (e.g. --set lr=3e-3)")
        value = parse_value(raw)
        head, _, sub = key.partition(".")
        if sub and not nested:
            raise ConfigError(f"--set {item!r}: {key!r} is not a field; use e.g. num_heads=12")
        if sub:
            out.setdefault(head, {})[sub] = value
        else:
            out[key] = value
    return out
