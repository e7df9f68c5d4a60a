"""transfer: pre-train on a source, then train on k labelled images per class of a target the
source never saw, from the pre-trained weights and from scratch (the paper's section 3).

Its own preset keys:

- `protocols`: name -> `source` and `target` (TrainConfig keys: where pre-training and the
  target task take their data) and optionally `shots` (replaces the study's for that protocol);
  a protocol set to null is dropped;
- `shots`: labelled images per class of the target runs (whole numbers, or `all`);
- `pretrain` (keys of the pre-training runs), `target` (keys of every target run) and
  `finetune` (keys of the target runs that start from the pre-trained weights).

Per protocol and family one pre-training (with the first seed); per seed and k two target runs:
one from the pre-trained weights (variant `pretrained`) and one from scratch (`scratch`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from vitlab.errors import ConfigError
from vitlab.study.curves import Curve, num, pct
from vitlab.study.keys import check_axis, check_mapping, check_name, check_train_keys, drop_nulls
from vitlab.study.points import ALL, Plan, Point, family_keys, family_label, point_config
from vitlab.study.studies.base import Axis, Study

DESCRIPTION = (
    "pre-train on a source, fine-tune on k images per class of a target the source never saw, "
    "against the same models trained from scratch on the same k (section 3: Fashion-MNIST -> "
    "digits, and 5 Fashion-MNIST classes -> the others)"
)
SIDES = ("source", "target", "shots")
# TrainConfig keys the target runs get from the study
RESERVED = {
    "train_per_class": "each target run's images per class come from `shots`",
    "init_from": "the pre-trained runs start from their pre-training, the others from scratch",
}


# ------------------------------------------------------------------------------ the keys
def check(spec: dict[str, Any]) -> None:
    """Its keys' values; drops the protocols set to null."""
    check_axis("shots", spec.get("shots"))
    check_train_keys("pretrain", spec.get("pretrain", {}))
    for stage in ("target", "finetune"):
        check_train_keys(stage, spec.get(stage, {}), RESERVED)
    protocols = check_mapping(
        "protocols", spec.get("protocols"), "names to sides", "source, target"
    )
    spec["protocols"] = drop_nulls(protocols)
    if not spec["protocols"]:
        raise ConfigError(
            "a transfer study needs `protocols` (name -> source, target); none is left"
        )
    for name, sides in spec["protocols"].items():
        _check_protocol(name, sides)


def _check_protocol(name: str, sides: Any) -> None:
    where = f"protocols.{name}"
    check_name("protocols", name)
    for side in check_mapping(where, sides, "sides", "source, target, shots"):
        if side not in SIDES:
            raise ConfigError(f"{where}.{side}: a protocol takes {', '.join(SIDES)}")
    check_train_keys(f"{where}.source", sides.get("source", {}))
    check_train_keys(f"{where}.target", sides.get("target", {}), RESERVED)
    if "shots" in sides:
        check_axis(f"{where}.shots", sides["shots"])


# ------------------------------------------------------------------------------ the points
def expand(plan: Plan) -> list[Point]:
    """Per protocol and family one pre-training (with the first seed), then per seed and k the
    target runs: a fine-tuning that starts from its weights, and a run from scratch."""
    points = []
    seeds = plan.seeds()
    for proto, sides in plan.spec["protocols"].items():
        for fam, keys in plan.spec["families"].items():
            pre = _pretrain_point(plan, proto, sides, fam, keys, seeds[0])
            points.append(pre)
            for seed in seeds:
                points += _target_points(plan, proto, sides, fam, keys, seed, pre)
    return points


def _pretrain_point(
    plan: Plan, proto: str, sides: dict[str, Any], fam: str, keys: dict[str, Any], seed: int
) -> Point:
    pid = f"{proto}/pretrain-{fam}"
    layers = [family_keys(keys), plan.spec.get("pretrain"), sides.get("source")]
    cfg = point_config(plan, *layers, run_id=pid, seed=seed)
    return Point(pid, fam, family_label(fam, keys), seed, ALL, cfg, "pretrain", proto)


def _target_points(
    plan: Plan,
    proto: str,
    sides: dict[str, Any],
    fam: str,
    keys: dict[str, Any],
    seed: int,
    pre: Point,
) -> list[Point]:
    spec, points = plan.spec, []
    weights = "best" if pre.config.get("report_best") else "last"
    start = {"init_from": str(pre.run_dir / f"{weights}.safetensors")}
    for k in sides.get("shots", spec["shots"]):
        axis = {"train_per_class": None if k == ALL else k}
        for variant, extra in (("pretrained", [spec.get("finetune"), start]), ("scratch", [])):
            pid = f"{proto}/{fam}-{variant}-k{k}-s{seed}"
            layers = [family_keys(keys), spec.get("target"), *extra, sides.get("target"), axis]
            cfg = point_config(plan, *layers, run_id=pid, seed=seed)
            needs = (pre.id,) if extra else ()
            label = family_label(fam, keys)
            points.append(Point(pid, fam, label, seed, k, cfg, variant, proto, needs))
    return points


# ------------------------------------------------------------------------------ the summary
def summary(cs: list[Curve]) -> list[str]:
    """Per protocol and family, what pre-training changes at each k."""
    lines = []
    pairs: dict[tuple[str, str], dict[str, Curve]] = defaultdict(dict)
    for c in cs:
        pairs[(c.protocol, c.label)][c.variant] = c
    for (proto, label), v in pairs.items():
        pre, scratch = v.get("pretrained"), v.get("scratch")
        if pre is None or scratch is None:
            continue
        gains = []
        for i, name in enumerate(pre.names):
            if name in scratch.names:
                j = scratch.names.index(name)
                gains.append(
                    f"{pre.means[i] - scratch.means[j]:+.1f} points at {num(pre.xs[i])} per class "
                    f"({pct(pre.means[i])} vs {pct(scratch.means[j])})"
                )
        if gains:
            lines.append(
                f"{proto}, {label}: pre-training changes test top-1 by " + ", ".join(gains) + "."
            )
    return lines or ["No protocol has both pre-trained and from-scratch points yet."]


STUDY = Study(
    name="transfer",
    description=DESCRIPTION,
    axis=Axis("per_class", "labelled images per class"),
    keys=("shots", "protocols", "pretrain", "target", "finetune"),
    check=check,
    expand=expand,
    summary=summary,
    reserved=tuple(RESERVED.items()),
    variants=("pretrained", "scratch"),
    off_curve=("pretrain",),
)
