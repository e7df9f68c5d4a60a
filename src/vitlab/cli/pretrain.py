"""`vitlab pretrain`: pre-train a ViT on images without labels (paper section 4.6; MAE)."""

from __future__ import annotations

import argparse

from vitlab.cli.common import add_config_flags
from vitlab.cli.train import add_common, config_keys
from vitlab.train.config import PRETRAIN_FLAGS, TrainConfig, list_presets

HELP = "pre-train a ViT on images without labels (masked patch prediction, MAE)"

DESCRIPTION = """\
Pre-train a ViT or hybrid on images without their labels, then fine-tune it on the few you have
(`vitlab finetune --from RUN/last.safetensors`). Two objectives:

  mpp  the paper's masked patch prediction (section 4.6, Appendix B.1.2): 50% of the patch
       embeddings are corrupted (80% of them replaced by a learned [mask] embedding, 10% by
       another patch's, 10% kept) and the model predicts each corrupted patch's mean colour,
       3 bits per channel (512 classes for RGB, 8 for grey), with cross-entropy.
  mae  a masked autoencoder (He et al. 2022): 75% of the patches are dropped, the encoder sees
       the rest, and a small decoder reconstructs the dropped patches' pixels (normalised per
       patch); mean squared error. Each epoch writes RUN/reconstructions/epoch_NNN.png.

Any --data works (its labels are ignored), and imagefolder:PATH may be a flat folder of
images. The run machinery is `vitlab train`'s: presets, --resume, torchrun, metrics.jsonl,
summary.csv, curves.png (validation loss, not accuracy; the best checkpoint is the lowest
validation loss). last.safetensors holds the encoder, and the decoder (mae.*) or head (mpp.*)
under their own keys: fine-tuning, export and `vitlab.load_checkpoint` drop those and say so.
"""

EPILOG = """\
examples:
  vitlab pretrain --config fashion_mnist_mae --out runs/mae        MAE on 57,000 unlabelled images
  vitlab finetune --config fashion_mnist_finetune --from runs/mae/last.safetensors
                                                    then fine-tune on the labelled ones
  vitlab pretrain --objective mpp --model vit_mini_p8 --data imagefolder:all_photos --img-size 64
  vitlab pretrain --config fashion_mnist_mae --out runs/mae --resume   continue a run

presets: {presets}

config keys (--set KEY=VALUE; model_args.KEY for the model's own fields):
{keys}
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG.format(presets=", ".join(list_presets()), keys=config_keys()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--objective",
        choices=("mpp", "mae"),
        help="what to learn without labels (default: the preset's, else mae)",
    )
    add_config_flags(p, TrainConfig, PRETRAIN_FLAGS)
    add_common(p, None, distill=False)


def run(args: argparse.Namespace) -> int:
    """`vitlab train` with a self-supervised objective (mae unless the preset or a flag says)."""
    import dataclasses
    import logging

    from vitlab.cli.common import parse_set
    from vitlab.cli.train import config_from_args, run_config
    from vitlab.errors import ConfigError

    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts one over: pass one")
    keys = ("objective", *PRETRAIN_FLAGS)
    extra = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    cfg = config_from_args(args, extra)
    if cfg.objective == "supervised":
        if parse_set(args.set).get("objective") == "supervised":
            raise ConfigError("vitlab pretrain learns without labels: objective mpp or mae; "
                              "`vitlab train` learns from labels")  # fmt: skip
        cfg = dataclasses.replace(cfg, objective="mae")
        logging.getLogger("vitlab").info("objective: mae (--objective mpp for the paper's)")
    return run_config(args, cfg)
