"""What the subcommands share: the parser (one-line errors), typed and range-checked numbers,
output paths checked for their kind before any work starts, the checkpoint/source/device
arguments, `--set key=value` parsing, and loading a checkpoint. Nothing here imports torch at
module level, so building the parser (`vitlab --help`) stays instant; the library is imported
when a command runs."""

from __future__ import annotations

import argparse
import logging
import math
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from vitlab.errors import ConfigError
from vitlab.weights.formats import AUTO, SOURCE_NAMES, runtime_graph

SOURCE_CHOICES = [AUTO, *SOURCE_NAMES]


class Parser(argparse.ArgumentParser):
    """argparse with vitlab's manners: a mistake is one line (what was wrong, where to look)
    and exit status 2, and `-q` works before or after the command name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print warnings and errors only",
        )

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see `{self.prog} --help`)")


class UsageError(Exception):
    """A command line that does not parse; `vitlab` prints it as one line and exits with 2."""


# ------------------------------------------------------------------------- typed numbers
def number(kind: type, minimum: float | None = None, *, above: bool = False) -> Callable:
    """An argparse `type` for a finite number of `kind` (int or float, in any notation) that is
    at least `minimum` (more than it with `above`); the error says which number is wanted."""
    what = "a whole number" if kind is int else "a number"
    if minimum is not None:
        what += f" {'>' if above else '>='} {minimum:g}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text) if kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        if minimum is not None and (value <= minimum if above else value < minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    parse.numeric = True  # type: ignore[attr-defined]  (the generated CLI test finds them)
    return parse


# --------------------------------------------------------------------------- output paths
def _no_file_on_the_way(path: Path, text: str) -> None:
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")


def _kind(kind: str) -> Callable[[Callable], Callable]:
    def mark(parse: Callable) -> Callable:
        parse.path_kind = kind  # type: ignore[attr-defined]  "dir" or "file"
        return parse

    return mark


@_kind("dir")
def out_dir(text: str) -> Path:
    """A folder to write into (made if missing): refused when a file is there already."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder (made if missing)")
    _no_file_on_the_way(path, text)
    return path


def out_file(*suffixes: str) -> Callable[[str], Path]:
    """A file to write (its folder made if missing): refused when it is a folder, or when its
    name does not end in one of `suffixes`."""
    ends = " or ".join(suffixes)

    def parse(text: str) -> Path:
        path = Path(text).expanduser()
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name ending {ends}")
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text}: give a file name ending {ends}")
        _no_file_on_the_way(path, text)
        return path

    parse.__name__ = f"file name ending {ends}"
    return _kind("file")(parse)


@_kind("dir")
def in_dir(text: str) -> Path:
    """A folder to read from (or to download into): refused when it is a file."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give the folder that holds the data")
    return path


# ------------------------------------------------------------------- shared flag groups
DATA_HELP = "dataset, e.g. fashion-mnist or imagefolder:DIR"


def add_data_args(
    p: argparse.ArgumentParser,
    help: str = DATA_HELP,
    *,
    required: bool = False,
    into: Any = None,
    download: bool = True,
) -> None:
    """The data group, declared once: `--data NAME[:PATH]` (added to `into`, e.g. a mutually
    exclusive group, when given), `--data-root DIR` and `--download`."""
    (into or p).add_argument("--data", required=required, metavar="NAME[:PATH]", help=help)
    add_data_root_args(p, "the dataset", download=download)


def add_data_root_args(p: Any, what: str, *, download: bool = True) -> None:
    """`--data-root DIR` and `--download` for `what` (a dataset another flag names: "the
    dataset", "--calibrate's dataset")."""
    go = " (or go)" if download else ""
    p.add_argument("--data-root", type=in_dir, metavar="DIR", help=f"where {what}'s files are{go}")
    if download:
        p.add_argument("--download", action="store_true", help=f"download {what} if missing")


def add_config_flags(p: argparse.ArgumentParser, cls: type, flags: dict[str, Any]) -> None:
    """One `--field-name` flag per entry of `flags` (field -> its `Flag`: help, metavar, folder),
    typed from the dataclass `cls`'s annotation: a bool is a switch, a Literal offers its
    choices, an int or float is parsed as a number (in any notation), a folder is checked for
    its kind. Ranges are left to `cls`, which checks every value once; a flag not given is
    None."""
    import typing

    hints = typing.get_type_hints(cls)
    for name, flag in flags.items():
        hint = hints[name]
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(members) == 1:
            hint = members[0]  # X | None: X
        kwargs: dict[str, Any] = {"dest": name, "help": flag.help, "default": None}
        if hint is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(hint) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        elif hint in (int, float):
            kwargs["type"] = number(hint)
        elif flag.folder is not None:
            kwargs["type"] = in_dir if flag.folder == "read" else out_dir
        if flag.metavar:
            kwargs["metavar"] = flag.metavar
        p.add_argument("--" + name.replace("_", "-"), **kwargs)


def as_flag_error(
    error: ConfigError, given: dict[str, Any], flags: dict[str, str] | None = None
) -> ConfigError:
    """A config check's message about a field the command line set with a flag, said about
    the flag (`flags` maps a field to its flag where that is not --field-name): "batch_size must
    be >= 1 (check the preset or --set)" for `--batch-size 0` becomes "--batch-size 0:
    batch_size must be >= 1", and "init_from m.onnx is ..." for `--from m.onnx` "--from
    m.onnx is ..."."""
    text = str(error)
    for name, value in given.items():
        if re.match(rf"{name}\b(?![.\w])", text):
            flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
            text = text.removesuffix(" (check the preset or --set)")
            if text.startswith(f"{name} {value} "):
                return ConfigError(flag + text[len(name) :])
            return ConfigError(f"{flag} {value}: {text}")
    return error


def add_checkpoint_args(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--checkpoint PATH` (required), `--source` (the registry's names, or auto) and `--set`
    (model-config fields to apply while loading, e.g. num_heads for files that lack it)."""
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help=help
        or "any file `vitlab.load_checkpoint` reads: vitlab .safetensors, timm state "
        "dicts, Google .npz, Hugging Face directories, torchvision state dicts, hub references, "
        "and .onnx files vitlab exported (run by ONNX Runtime on the CPU)",
    )
    p.add_argument(
        "--source",
        default=AUTO,
        choices=SOURCE_CHOICES,
        help="the checkpoint's ecosystem (default: detected from the file)",
    )
    p.add_argument(
        "--set",
        dest="model_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model-config field to apply while loading, e.g. num_heads=4 (timm and "
        "torchvision files do not store it); repeatable",
    )


def add_device_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument(
        "--device",
        default=default,
        help=f"cpu, cuda, cuda:N or auto: the GPU when there is one (default {default})",
    )


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """`--precision` of the inference commands (`vitlab.runtime.precision.inference_precision`)."""
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="fp32; bf16 (a bf16 copy of the weights: faster where the CPU has AVX512-BF16 or "
        "AMX, or on a GPU; logits round to about 2-3 significant digits); auto: bf16 where "
        "its matmuls are measured faster here, else fp32 (default fp32)",
    )


def load_model(args: argparse.Namespace) -> Any:
    """The checkpoint of `args` (--checkpoint, --source, --set) on `args.device`, checked first:
    a one-line error for a device that is not there."""
    from vitlab.runtime.device import pick_device
    from vitlab.weights.checkpoint import load_checkpoint

    device = getattr(args, "device", "auto")
    overrides = parse_set(getattr(args, "model_set", []), nested=False)
    graph = runtime_graph(args.checkpoint)
    if graph is not None and device == "auto":
        device = graph.device  # e.g. ONNX Runtime's CPU provider; another is refused by the model
    dev = pick_device(device)
    return load_checkpoint(args.checkpoint, source=args.source, **overrides).to(dev)


def params_text(n: float) -> str:
    """A parameter count for people: 86.6M, 24K."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def note_channels(model: Any) -> None:
    """Say that image files will be converted, when the model takes other than colour."""
    chans = model.cfg.in_chans
    if chans != 3:
        what = "greyscale" if chans == 1 else f"{chans} channels"
        logging.getLogger("vitlab").warning(
            "note: the model takes %d channel(s): images are converted to %s", chans, what
        )


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
