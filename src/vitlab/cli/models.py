"""`vitlab models`: the registry as a table (the paper's Table 1 with `--paper`)."""

from __future__ import annotations

import argparse
import json

from vitlab.cli.common import params_text

HELP = "list model variants with layers, width, heads, parameters and GFLOPs"

DESCRIPTION = """\
List every model variant vitlab can build: the ViTs, the R50+ViT hybrids and the BiT ResNets
the paper compares against. Sizes are computed from the registry on PyTorch's meta device, without
allocating a single weight (ViT-H/14 included; the whole list takes about as long as importing
torch). Any name shown here, the paper's names ("ViT-B/16", "B/16",
"R50+ViT-B/16") and timm's ("vit_base_patch16_384", "resnetv2_50x1_bit") work wherever a model is
asked for. For the CNNs, "layers" is the ResNet depth and "width" the final channels; for hybrids
and CNNs the total stride (pixels per token / per final feature) is in the --json rows.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pattern", nargs="?", help="only names containing this text (e.g. b16)")
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper's Table 1 (ViT-Base/Large/Huge), GFLOPs at 224 px",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per variant")


def run(args: argparse.Namespace) -> int:
    from vitlab.models.registry import list_models, variant_facts

    names = list_models(args.pattern, paper_only=args.paper)
    table = [variant_facts(name, 224 if args.paper else None) for name in names]
    if not table:
        print(f"no variant matches {args.pattern!r}; `vitlab models` lists them all")
        return 1
    if args.json:
        for r in table:
            print(json.dumps(r))
        return 0
    if args.paper:
        print("Table 1 of the paper (Dosovitskiy et al., 2021), computed from vitlab's registry:")
    header = f"{'name':<14}{'paper name':<12}{'layers':>7}{'width':>7}{'MLP':>7}{'heads':>6}"
    header += f"{'img':>6}{'params':>10}{'Table 1':>9}{'GFLOPs':>9}"
    print(header)
    print("-" * len(header))
    for r in table:
        alias = r["aliases"][0] if r["aliases"] else ""
        paper_p = f"{r['paper_params_m']}M" if r["paper_params_m"] else ""
        mlp, heads = r["mlp"] or "-", r["heads"] or "-"
        print(
            f"{r['name']:<14}{alias:<12}{r['layers']:>7}{r['width']:>7}{mlp:>7}"
            f"{heads:>6}{r['img_size']:>6}{params_text(r['params_m'] * 1e6):>10}{paper_p:>9}"
            f"{r['gflops']:>9.2f}"
        )
    print(
        f"\n{len(table)} variants; parameters with a 1000-class head for the ImageNet variants "
        "(10 classes for the small ones); GFLOPs per image forward (2 per multiply-add, "
        "attention included)."
    )
    return 0
