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

A family with `self_supervised` (`vitlab.study.unlabelled`) adds the arm "pre-trained without
labels": per protocol and objective one pre-training on the source images without their labels
(with the first seed, like the supervised one), and per seed and k a target run that starts from
it (variant `mae` or `mpp`, with the `finetune` keys). The convergence budget and the
learning-rate grids are the study layers every study shares (`vitlab.study.budget`,
`vitlab.study.lr_grid`); the pre-trainings without labels keep their own fixed budget.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from vitlab.errors import ConfigError
from vitlab.study import budget, unlabelled
from vitlab.study.curves import Curve, num, versus
from vitlab.study.keys import check_axis, check_mapping, check_name, check_train_keys, drop_nulls
from vitlab.study.points import ALL, Plan, Point, family_keys, family_label, point_config
from vitlab.study.studies.base import Axis, Study

DESCRIPTION = (
    "pre-train on a source (with its labels, or optionally without them), fine-tune on k images "
    "per class of a target the source never saw, against the same models trained from scratch "
    "on the same k, each until its validation accuracy stops improving (section 3: "
    "Fashion-MNIST -> digits, and 5 Fashion-MNIST classes -> the others)"
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
    by_budget = budget.reserved(spec)
    check_train_keys("pretrain", spec.get("pretrain", {}), by_budget)
    for stage in ("target", "finetune"):
        check_train_keys(stage, spec.get(stage, {}), {**RESERVED, **by_budget})
    for fam, keys in spec["families"].items():
        if keys.get(unlabelled.KEY) is not None:  # null: no such arm
            unlabelled.check_arm(f"families.{fam}.{unlabelled.KEY}", keys[unlabelled.KEY])
    protocols = check_mapping(
        "protocols", spec.get("protocols"), "names to sides", "source, target"
    )
    spec["protocols"] = drop_nulls(protocols)
    if not spec["protocols"]:
        raise ConfigError(
            "a transfer study needs `protocols` (name -> source, target); none is left"
        )
    for name, sides in spec["protocols"].items():
        _check_protocol(name, sides, by_budget)


def _check_protocol(name: str, sides: Any, by_budget: dict[str, str]) -> None:
    where = f"protocols.{name}"
    check_name("protocols", name)
    for side in check_mapping(where, sides, "sides", "source, target, shots"):
        if side not in SIDES:
            raise ConfigError(f"{where}.{side}: a protocol takes {', '.join(SIDES)}")
    check_train_keys(f"{where}.source", sides.get("source", {}), by_budget)
    check_train_keys(f"{where}.target", sides.get("target", {}), {**RESERVED, **by_budget})
    if "shots" in sides:
        check_axis(f"{where}.shots", sides["shots"])


# ------------------------------------------------------------------------------ the points
def expand(plan: Plan) -> list[Point]:
    """Per protocol and family one pre-training (with the first seed), and one without labels
    per objective of its arm; then per seed and k the target runs: a fine-tuning that starts
    from each pre-training, and a run from scratch."""
    points = []
    seeds = plan.seeds()
    for proto, sides in plan.spec["protocols"].items():
        for fam, keys in plan.spec["families"].items():
            pre = _pretrain_point(plan, proto, sides, fam, keys, seeds[0])
            weights = "best" if pre.config.get("report_best") else "last"
            starts = {
                "pretrained": (pre, {"init_from": str(pre.run_dir / f"{weights}.safetensors")})
            }
            points.append(pre)
            for obj in unlabelled.arms(keys):
                pid = f"{proto}/{obj}-pretrain-{fam}"
                ssl = unlabelled.pretrain_point(
                    plan,
                    fam,
                    keys,
                    obj,
                    seeds[0],
                    data=sides.get("source"),
                    pid=pid,
                    protocol=proto,
                )
                starts[obj] = (ssl, unlabelled.start_from(ssl))
                points.append(ssl)
            for seed in seeds:
                points += _target_points(plan, proto, sides, fam, keys, seed, starts)
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
    starts: dict[str, tuple[Point, dict[str, Any]]],
) -> list[Point]:
    """Per k: one run from each pre-training in `starts` (variant -> the pre-training and the
    layer that starts from it), and one from scratch."""
    spec, points = plan.spec, []
    for k in sides.get("shots", spec["shots"]):
        axis = {"train_per_class": None if k == ALL else k}
        arms = [(v, [spec.get("finetune"), start], (pre.id,)) for v, (pre, start) in starts.items()]
        for variant, extra, needs in [*arms[:1], ("scratch", [], ()), *arms[1:]]:
            pid = f"{proto}/{fam}-{variant}-k{k}-s{seed}"
            layers = [family_keys(keys), spec.get("target"), *extra, sides.get("target"), axis]
            cfg = point_config(plan, *layers, run_id=pid, seed=seed)
            label = family_label(fam, keys)
            points.append(Point(pid, fam, label, seed, k, cfg, variant, proto, needs))
    return points


# ------------------------------------------------------------------------------ the summary
def notes(plan: Plan) -> list[str]:
    return unlabelled.arm_note(
        plan,
        "the source images without their labels, and labels only from the k target images per "
        "class it is fine-tuned on",
    )


# ------------------------------------------------------------------------------ the summary
PRETRAINING = {
    "pretrained": "supervised pre-training",
    "mae": "pre-training without labels (MAE)",
    "mpp": "pre-training without labels (MPP)",
}


def summary(cs: list[Curve]) -> list[str]:
    """Per protocol and family, each pre-trained arm against training from scratch at each k
    (a difference within the seeds' spread is none)."""
    lines = []
    arms: dict[tuple[str, str], dict[str, Curve]] = defaultdict(dict)
    for c in cs:
        arms[(c.protocol, c.label)][c.variant] = c
    for (proto, label), v in arms.items():
        scratch = v.get("scratch")
        for variant, pre in v.items():
            if scratch is None or variant == "scratch":
                continue
            gains = []
            for i, name in enumerate(pre.names):
                if name in scratch.names:
                    j = scratch.names.index(name)
                    spread = max(pre.spreads[i], scratch.spreads[j])
                    what = f"{num(pre.xs[i])} per class"
                    a = PRETRAINING.get(variant, variant)
                    gains.append(
                        versus(a, pre.means[i], "from scratch", scratch.means[j], spread, what)
                    )
            if gains:
                lines.append(f"{proto}, {label}: " + "; ".join(gains) + ".")
    return lines or ["No protocol has both pre-trained and from-scratch points yet."]


STUDY = Study(
    name="transfer",
    description=DESCRIPTION,
    axis=Axis("per_class", "labelled images per class"),
    keys=("shots", "protocols", "pretrain", "target", "finetune"),
    check=check,
    expand=expand,
    summary=summary,
    family_keys=(unlabelled.KEY,),
    reserved=tuple(RESERVED.items()),
    variants=("pretrained", "scratch", *unlabelled.VARIANTS),
    off_curve=("pretrain", *unlabelled.OFF_CURVE),
    notes=notes,
)
