"""`vitlab finetune`: fine-tune a pre-trained checkpoint on new data (paper section 3.2)."""

from __future__ import annotations

import argparse

from vitlab.cli.train import add_common, config_keys
from vitlab.cli.train import run as run  # the same handler as `vitlab train`
from vitlab.train.config import list_presets

HELP = "fine-tune a checkpoint on new data (new zero-initialised head, any resolution)"

DESCRIPTION = """\
Fine-tune a pre-trained model, as the paper does (section 3.2, Appendix B.1.1): the checkpoint's
head is replaced by a zero-initialised one for the new classes, and the position embeddings are
resampled (2-D interpolation) when --img-size differs from the checkpoint's. --from takes any
checkpoint vitlab.load_checkpoint reads: vitlab .safetensors, timm .pth/.safetensors, and the
other ecosystems' formats as they land. The default preset, finetune_paper, is the paper's
recipe: SGD with momentum 0.9, batch 512 (via gradient accumulation), cosine decay, no weight
decay, gradient clipping at 1, 384 px, 500 steps. Everything else works as in `vitlab train`.
"""

EPILOG = """\
examples:
  vitlab finetune --from runs/demo/last.safetensors --data imagefolder:photos --img-size 56
  vitlab finetune --from vit_base_patch16_224.pth --data pets --download --steps 500
  vitlab finetune --from b16.safetensors --data cifar10 --img-size 384 --set lr=0.01

presets: {presets}

config keys (--set KEY=VALUE; model_args.KEY for the model's own fields):
{keys}
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG.format(presets=", ".join(list_presets()), keys=config_keys()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from",
        dest="init_from",
        required=True,
        metavar="CHECKPOINT",
        help="the pre-trained weights (any format vitlab.load_checkpoint reads)",
    )
    add_common(p, "finetune_paper")
