"""`vitlab predict`: classify image files with any checkpoint vitlab loads."""

from __future__ import annotations

import argparse
import sys

from vitlab.cli.common import (
    add_checkpoint_args,
    add_device_arg,
    add_precision_arg,
    load_model,
    note_channels,
    number,
    out_dir,
    out_file,
)

HELP = "classify images (files or folders) with a checkpoint; top-k classes per image"

DESCRIPTION = """\
Classify images with a checkpoint. Preprocessing (resolution, crop, mean/std, grayscale or
colour) comes from the checkpoint itself, and so do the class names (class indices when it has
none). Folders are searched recursively for .jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm.

Any image a camera or an editor writes works: EXIF rotation is applied; grayscale, palette,
transparent (RGBA/LA, put on white), CMYK and 16-bit images are converted. A file that cannot
be used (empty, truncated, not an image, too large to decode safely, a directory, missing) is
reported on one line naming it and the reason, and the other images are still classified.

exit status: 0 every image was classified; 1 some files could not be read (the rest were
classified); 2 a usage error (bad checkpoint, bad option).
"""

EPILOG = """\
examples:
  vitlab predict --checkpoint runs/demo/last.safetensors shirt.png boot.jpg
  vitlab predict --checkpoint vit_b16.safetensors photos/ --topk 3 --out results.csv
  vitlab predict --checkpoint runs/demo/last.safetensors photos/ --explain explained/
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders")
    add_checkpoint_args(p)
    p.add_argument(
        "--topk", type=number(int, 1), default=5, metavar="K", help="classes per image (default 5)"
    )
    p.add_argument(
        "--out",
        type=out_file(".json", ".csv"),
        metavar="FILE",
        help="also write the results to FILE.json or FILE.csv",
    )
    p.add_argument(
        "--batch-size",
        type=number(int, 1),
        default=16,
        metavar="B",
        help="images per forward pass (16)",
    )
    p.add_argument(
        "--explain",
        type=out_dir,
        metavar="DIR",
        help="write each image with its attention-rollout heatmap overlaid to DIR (PNG)",
    )
    add_precision_arg(p)
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    from vitlab.data.images import find_images
    from vitlab.predict import predict_files
    from vitlab.progress import say

    model = load_model(args)
    note_channels(model)
    files = find_images(args.paths)
    result = predict_files(
        model,
        files,
        topk=args.topk,
        batch_size=args.batch_size,
        explain_dir=args.explain,
        out=args.out,
        on_failure=lambda f: say(f"vitlab predict: skipped {f.reason}"),
        progress=not args.quiet,
        precision=args.precision,
    )
    for pred in result.predictions:
        tops = ", ".join(f"{label} {q:.1%}" for _, label, q in pred.top)
        print(f"{pred.file}: {tops}")
    n_ok, n_bad = len(result.predictions), len(result.failures)
    summary = f"classified {n_ok} of {n_ok + n_bad} image(s)"
    summary += f"; {n_bad} could not be read (listed above)" if n_bad else ""
    summary += f"; results in {args.out}" if args.out else ""
    summary += f"; rollout overlays in {args.explain}" if args.explain and n_ok else ""
    print(summary, file=sys.stderr)
    return 1 if n_bad else 0
