"""`vitlab soup`: average fine-tuned checkpoints into one model (model soups, Wortsman et al.
2022)."""

from __future__ import annotations

import argparse

from vitlab.cli.common import add_data_args, add_device_arg, number, out_dir

HELP = "average fine-tunes of one checkpoint into one model (uniform or greedy model soup)"

DESCRIPTION = """\
Average the weights of several fine-tunes of one pre-trained checkpoint (runs with other
learning rates, augmentations or lengths) into one model: a "model soup" (Wortsman et al.
2022), often more accurate than the best of its ingredients, and no slower, since it is one
model. OUT/soup.safetensors is an ordinary vitlab checkpoint: eval, predict, inspect, serve and
convert (ONNX too) take it.

  uniform  (the default) the element-wise mean of all the ingredients' weights; no evaluation
           unless --data is given
  greedy   (--greedy --data D) the paper's recipe: the ingredients sorted by validation
           accuracy, best first; the soup starts as the best one and each next one joins only
           if the soup's validation accuracy does not drop

The validation images are the dataset's own validation split, else those the ingredients'
training runs held out (val_split and seed of the config.yaml beside each checkpoint; runs that
held out different images, such as runs with another seed, are refused), else --val-split and
--seed (which win over the runs'). The test split is reported, never used for a choice. With
--data, OUT also gets soup.json (each ingredient's and soup's validation and test top-1, the
ingredients the greedy soup kept) and soup.png (a bar chart of them).

Refused before anything is evaluated: ingredients with other classes or another architecture
(drop rates may differ), and ingredients that did not start from the same weights: `vitlab
finetune` records a hash of its starting weights in every checkpoint it writes; a model
trained from scratch has none.
"""

EPILOG = """\
examples:
  vitlab soup runs/ft1/last.safetensors runs/ft2/last.safetensors
                        the uniform soup of two fine-tunes in runs/soup (no evaluation)
  vitlab soup runs/ft1/last.safetensors runs/ft2/last.safetensors --greedy --data fashion-mnist
                        the greedy soup, chosen on the images the runs held out
  vitlab soup runs/ft1/best.safetensors runs/ft2/best.safetensors --data fashion-mnist
                        the uniform soup, each ingredient's accuracy beside it (soup.png)
  vitlab eval --checkpoint runs/soup/soup.safetensors --data fashion-mnist
                        then use it as any checkpoint
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "soup",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="the fine-tuned checkpoints to average (any file vitlab.load_checkpoint reads)",
    )
    p.add_argument(
        "--out",
        type=out_dir,
        default="runs/soup",
        metavar="DIR",
        help="write soup.safetensors here, and with --data soup.json and soup.png (default "
        "runs/soup)",
    )
    p.add_argument(
        "--greedy",
        action="store_true",
        help="the greedy soup: keep an ingredient only if validation accuracy does not drop "
        "(needs --data)",
    )
    add_data_args(p, "measure the ingredients and soups on this dataset, e.g. fashion-mnist")
    p.add_argument(
        "--val-split",
        type=number(float, 0),
        metavar="F",
        help="validate on this fraction of the training images, held out as a run with "
        "val_split F does (default: the runs' own, from their config.yaml)",
    )
    p.add_argument(
        "--seed",
        type=number(int, 0),
        metavar="N",
        help="the seed of that hold-out (default: the runs' own, else 0)",
    )
    p.add_argument(
        "--batch-size", type=number(int, 1), default=256, help="images per batch (default 256)"
    )
    add_device_arg(p)
    p.add_argument(
        "--allow-different-init",
        action="store_true",
        help="average checkpoints that did not start from the same weights (or do not say): "
        "such soups usually fail, their weights lying in different basins",
    )


def run(args: argparse.Namespace) -> int:
    from vitlab.soup import SOUP_FILES, format_summary, make_soup

    report = make_soup(
        args.checkpoints,
        args.out,
        greedy=args.greedy,
        data=args.data,
        root=args.data_root,
        download=args.download,
        val_split=args.val_split,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        allow_different_init=args.allow_different_init,
    )
    print(format_summary(report))
    roles = ("soup", "report", "chart") if report["data"] is not None else ("soup",)
    print("wrote " + ", ".join(str(args.out / SOUP_FILES[role]) for role in roles))
    return 0
