"""`vitlab` entry point: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from vitlab._version import __version__
from vitlab.cli.common import Parser, UsageError
from vitlab.errors import VitlabError

# Subcommand -> module under vitlab.cli; each module has `add_parser(subparsers)` and `run(args)`.
# One per line, in the order `vitlab --help` shows them.
COMMANDS = [
    "train",
    "pretrain",
    "finetune",
    "eval",
    "predict",
    "inspect",
    "convert",
    "bench",
    "models",
    "study",
    "soup",
    "serve",
]

EPILOG = """\
examples:
  vitlab train --config fashion_mnist_vit              a ViT from scratch on Fashion-MNIST
  vitlab pretrain --objective mae --data imagefolder:all_photos
                                                       pre-training without labels (MAE, mpp)
  vitlab finetune --from m.safetensors --data imagefolder:photos
                                                       new head, the paper's fine-tuning recipe
  vitlab eval --checkpoint m.safetensors --data fashion-mnist
                                                       top-1/top-5, per-class, confusion matrix
  vitlab predict --checkpoint m.safetensors photos/    top-5 classes per image
  vitlab inspect --checkpoint m.safetensors --out maps/
                                                       Figures 6 and 7 as PNGs + index.html
  vitlab convert ViT-B_16.npz out --to hf              Google weights -> a Hugging Face directory
  vitlab bench --model vit_s16 --vs timm               img/s and utilisation, side by side
  vitlab models --paper                                the paper's Table 1
  vitlab study data-scaling                            ViT vs ResNet vs hybrid on growing subsets:
                                                       plot, table and summary in an HTML page
  vitlab soup runs/ft1/last.safetensors runs/ft2/last.safetensors
                                                       average fine-tunes into one model (soup)
  vitlab serve --checkpoint m.safetensors              a web page and an HTTP API on localhost

Run `vitlab COMMAND --help` for the options of a command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vitlab",
        description="Vision Transformers as the paper defines them (Dosovitskiy et al., 2021): "
        "build every variant, load every ecosystem's weights, train, inspect, benchmark, rerun "
        "the paper's experiments, average fine-tunes (model soups), serve a model and deploy it "
        "(ONNX, int8).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vitlab {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )
    for name in COMMANDS:
        importlib.import_module(f"vitlab.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    args.quiet = getattr(args, "quiet", False)  # -q before or after the command name
    # vitlab's own progress lines at INFO; other libraries' (the ONNX exporter's passes,
    # the quantiser's per-node notes) only from WARNING up
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("vitlab").setLevel(logging.WARNING if args.quiet else logging.INFO)
    module = importlib.import_module(f"vitlab.cli.{args.command}")
    from tqdm.contrib.logging import logging_redirect_tqdm  # log lines above progress bars

    try:
        with logging_redirect_tqdm():
            return int(module.run(args) or 0)
    except VitlabError as e:
        print(f"vitlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
