"""`vitlab study`: the paper's experiments on data, pre-training and scale, and their report."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from pathlib import Path

from vitlab.cli.common import add_data_root_args, in_dir, number, out_dir, parse_value
from vitlab.errors import ConfigError

DESCRIPTION = """\
Run one of the paper's experiments as a set of ordinary training runs ("points", one run
directory each, made by the same code as `vitlab train`), then write one report:

{studies}

Every point trains until its validation accuracy stops improving, under a step cap (the
preset's `budget`; a point that reaches the cap is flagged as not converged); a family's
learning rate can be chosen on validation accuracy from a grid (`lr_grid`), and a family can add
the arm pre-trained without labels (`self_supervised`: mae or mpp).

The plan (every point with its resolved config) is written first to OUT/study.yaml. Rerunning
the same command continues a killed study: finished points are never retrained, a half-trained
one resumes from its last checkpoint. The report is OUT/results.csv (one row per point and
seed), OUT/STUDY.png and OUT/index.html (plot, tables and a summary computed from the numbers).
Presets: configs/studies/STUDY-quick.yaml (minutes on a laptop CPU) and STUDY-full.yaml
(the README's figures); everything in them can be changed with --set.
"""

EPILOG = """\
examples:
  vitlab study data-scaling                           the quick preset (about 15 min on 2 cores)
  vitlab study data-scaling --preset full --jobs 2    the README's figures, 2 points at a time
  vitlab study transfer --set seeds=[0,1,2] --set shots=[10,all]
  vitlab study data-scaling --set budget.patience=3   stop after 3 passes without a gain
  vitlab study model-scaling --set budget=null --set steps=200
                                                      no early stopping: 200 steps a point
  vitlab study data-scaling --set families.vit.lr_grid=null --set families.vit.lr=1e-3
                                                      the ViT at a fixed rate, no grid
  vitlab study data-scaling --set families.vit.self_supervised=null --set sizes=[1000,30000]
                                                      no arm without labels, two sizes
  vitlab study data-scaling --print-commands | xargs -P 4 -I{} sh -c {}
                                                      run the points with any launcher ...
  vitlab study data-scaling --collect runs/study/data-scaling-quick
                                                      ... then build the report from them
--set KEY=VALUE: a study key (sizes, shots, seeds, budget, train.KEY, families.NAME.KEY, ...)
changes the plan (families.NAME=null drops a family); any other key is a `vitlab train` config
key set for every point. Every key and value is checked before anything trains.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from vitlab.study.studies import STUDIES  # the registry only: no torch, no plotting

    p = sub.add_parser(
        "study",
        help=f"the paper's experiments: {', '.join(STUDIES)} (plots + HTML report)",
        description=DESCRIPTION.format(studies=_listing(STUDIES)),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=list(STUDIES), metavar="STUDY", help=", ".join(STUDIES))
    p.add_argument(
        "--preset",
        default="quick",
        metavar="NAME|YAML",
        help="quick (default), full, or a study YAML file (see configs/studies/)",
    )
    p.add_argument(
        "--out", type=out_dir, metavar="DIR", help="study folder (default runs/study/STUDY-PRESET)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="study_set",
        help="change the preset (see below); repeatable",
    )
    p.add_argument(
        "--jobs",
        type=number(int, 1),
        default=1,
        metavar="N",
        help="train N points at once as separate processes, the threads shared between them",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--print-commands",
        action="store_true",
        help="print one `vitlab train` command per unfinished point that can start now, and exit",
    )
    group.add_argument(
        "--collect",
        type=in_dir,
        metavar="DIR",
        help="only build the report of the study in DIR from the points that exist there",
    )
    add_data_root_args(p, "each dataset")


def _listing(studies: dict) -> str:
    """Each study's name and description, as `vitlab study --help` lists them."""
    wrap = textwrap.TextWrapper(
        width=95, initial_indent=" " * 17, subsequent_indent=" " * 17, break_on_hyphens=False
    )
    return "\n".join(f"  {name:<14}" + wrap.fill(s.description)[16:] for name, s in studies.items())


def study_sets(args: argparse.Namespace) -> dict[str, object]:
    """`--set` as dotted key -> value (the value read by the shared `parse_value`; the library's
    `read_spec` resolves the dotted keys), with --data-root and --download as config keys."""
    sets: dict[str, object] = {}
    for item in args.study_set:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r} (e.g. --set seeds=[0,1])")
        sets[key.strip()] = parse_value(raw)
    if args.data_root:
        sets["data_root"] = str(args.data_root)
    if args.download:
        sets["download"] = True
    return sets


def run(args: argparse.Namespace) -> int:
    from vitlab import study

    if args.collect:
        rep = study.collect(args.collect, args.name)
        return _print_report(rep)
    out = args.out or Path("runs/study") / f"{args.name}-{Path(args.preset).stem}"
    plan = study.plan_study(args.name, args.preset, out, study_sets(args))
    if args.print_commands:
        lines, later = study.print_commands(plan)
        print("\n".join(lines))
        note = f"{len(lines)} point(s) to run"
        if later:
            note += f"; {len(later)} more wait for the points they need (a pre-training, a "
            note += "learning-rate grid): print the commands again when these have finished"
        print(f"# {note}; then: vitlab study {args.name} --collect {shlex.quote(str(out))}",
              file=sys.stderr)  # fmt: skip
        return 0
    outcome, rep = study.run_study(plan, args.jobs)
    print(
        f"{plan.study}: {len(outcome.trained)} point(s) trained, {len(outcome.skipped)} already "
        f"done, {len(outcome.failed)} failed in {outcome.minutes:.1f} min",
        file=sys.stderr,
    )
    for pid in outcome.waiting:
        print(f"not run: {pid} (a point it needs failed)", file=sys.stderr)
    status = _print_report(rep)
    return 1 if outcome.failed or outcome.waiting else status


def _print_report(rep) -> int:
    for line in [*rep.summary, *rep.grid]:
        print(line)
    if rep.missing:
        print(f"{len(rep.missing)} point(s) not finished: {', '.join(rep.missing[:6])}"
              + (" ..." if len(rep.missing) > 6 else ""))  # fmt: skip
    print(f"report: {rep.page} (plot {rep.plot.name}, table {rep.csv.name})")
    return 0
