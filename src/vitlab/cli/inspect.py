"""`vitlab inspect`: the paper's Figures 6 and 7 for any checkpoint, as PNGs and an index.html."""

from __future__ import annotations

import argparse
import sys

from vitlab.cli.common import (
    add_checkpoint_args,
    add_data_args,
    add_device_arg,
    load_model,
    note_channels,
    number,
    out_dir,
)

HELP = "attention maps, rollout, attention distance, embeddings (Figures 6, 7) as PNGs + HTML"

DESCRIPTION = """\
Write the pictures of the paper's section 4.5 for a checkpoint into --out, with an index.html
that shows each one with a line of explanation:

  filters.png              principal components of the patch-embedding filters (Figure 7 left;
                           not for hybrids, whose patches come from a CNN)
  position_similarity.png  cosine similarity of every position embedding to all others
                           (Figure 7 centre; the fixed sin-cos ones for sincos models)
  attention_distance.png   mean attention distance in pixels of every head against depth,
                           averaged over the images (Figure 7 right)
  rollout_*.png            attention rollout per image (Figure 6)
  heads_block*_*.png       raw attention of the chosen heads of the chosen block per image

The images: --images (files or folders), or --data for the first test images of a dataset
(one per class first), or else scikit-image's sample photos (astronaut, coffee, chelsea;
`pip install 'vitlab[inspect]'`). For average-pooled models (no class token) rollout and raw
attention show the mean over the patch tokens' rows. Images run one at a time without
gradients, so even ViT-L and ViT-H fit on a CPU. Exit status: 0 done; 1 some --images could not
be read (the rest were inspected); 2 a usage error.
"""

EPILOG = """\
examples:
  vitlab inspect --checkpoint runs/demo/best.safetensors --data fashion-mnist --out maps
  vitlab inspect --checkpoint vit_b16.safetensors --images cat.jpg dog.jpg --out b16_maps
  vitlab inspect --checkpoint vit_b16.safetensors --block 0 --head 0 5 11 --out b16_block0
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_args(p)
    p.add_argument(
        "--out",
        required=True,
        type=out_dir,
        metavar="DIR",
        help="folder for the PNGs and index.html",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--images", nargs="+", metavar="IMAGE_OR_DIR", help="images or folders (default: samples)"
    )
    add_data_args(
        p,
        "or test images of a dataset, one per class first (as in vitlab train --data)",
        into=which,
        download=False,
    )
    p.add_argument(
        "--num-images",
        type=number(int, 1),
        default=6,
        metavar="N",
        help="images taken from --data (6)",
    )
    p.add_argument(
        "--block",
        type=number(int, 0),
        metavar="N",
        help="block of the raw attention maps (default: the last)",
    )
    p.add_argument(
        "--head",
        type=number(int, 0),
        nargs="+",
        metavar="H",
        help="heads of that block (default: all)",
    )
    p.add_argument(
        "--components",
        type=number(int, 1),
        default=28,
        metavar="K",
        help="filter PCs to show (default 28)",
    )
    p.add_argument(
        "--img-size",
        type=number(int, 1),
        metavar="PX",
        help="run at this resolution instead of the checkpoint's (position embeddings resampled)",
    )
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from vitlab.data.images import read_images, sample_photos
    from vitlab.inspect.report import inspect_model
    from vitlab.inspect.samples import dataset_images
    from vitlab.progress import say

    model = load_model(args)
    note_channels(model)
    if args.img_size:
        model.set_image_size(args.img_size)
    failed = []

    def report_bad(e: Exception) -> None:
        failed.append(e)
        say(f"vitlab inspect: skipped {e}")

    if args.images:
        images = read_images(args.images, model.cfg.in_chans, on_error=report_bad)
    elif args.data:
        images = dataset_images(args.data, args.data_root, args.num_images, model.cfg.in_chans)
    else:
        images = sample_photos(model.cfg.in_chans)
    report = inspect_model(
        model,
        images,
        args.out,
        block=args.block,
        heads=args.head,
        components=args.components,
        progress=not args.quiet,
    )
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"wrote {len(report.figures)} pictures for {len(images)} image(s); open {report.index}",
        file=sys.stderr,
    )
    return 1 if failed else 0
