"""The arm "distilled from a CNN" (DeiT, Touvron et al. 2021): a family trained again at every
point of the study, this time with a teacher, the point of another family (the BiT ResNet) at
the same size and seed. From a family key of the data-scaling study:

    families:
      vit:
        distilled:                            # the teacher's family, then the arm's keys
          from: resnet
          model_args: {distill_token: true}   # DeiT's distillation token (optional)
          distill: hard

The arm's points (variant `distilled`) take the family's keys, then the arm's TrainConfig keys,
and `teacher`: the weights the teacher point's report names (its checkpoint of best validation
accuracy with `report_best`, else its last); each needs its teacher point, so it starts once
that one has finished. The student sees what its teacher saw and nothing more: the same
labelled subset, and a teacher trained on that subset alone (DeiT's question at this scale:
does a CNN teacher pass its inductive bias to a ViT trained on the same labels?).
"""

from __future__ import annotations

from typing import Any

from vitlab.errors import ConfigError
from vitlab.study.keys import check_mapping, check_train_keys
from vitlab.study.points import Plan, Point, family_keys, family_label, point_config

KEY = "distilled"  # the family key
VARIANT = "distilled"  # the arm's variant (its curve)
FROM = "from"  # the arm's key naming the teacher's family
RESERVED = {
    "teacher": f"each point's teacher is the `{FROM}` family's point of the same size and seed",
    "init_from": "a distilled point trains from scratch, as its family's own points do",
}


def check_arm(where: str, value: Any, families: dict[str, Any], own: str) -> None:
    """`value` names the teacher's family (`from`: another family of the preset, itself not
    distilled) and adds TrainConfig keys of the arm (not `teacher`)."""
    hint = f"e.g. {{{FROM}: resnet, distill: hard}}"
    arm = check_mapping(where, value, f"`{FROM}` and training keys", hint)
    src = arm.get(FROM)
    others = [f for f in families if f != own]
    if src not in others:
        raise ConfigError(
            f"{where}.{FROM} must name the teacher's family, another family of the preset (it "
            f"has: {', '.join(others) or 'no other'}), got {src!r}"
        )
    if (families[src] or {}).get(KEY) is not None:
        raise ConfigError(
            f"{where}.{FROM}: families.{src} is distilled itself; a teacher family trains "
            "from its labels alone"
        )
    check_train_keys(where, {k: v for k, v in arm.items() if k != FROM}, RESERVED)


def teacher_of(keys: dict[str, Any]) -> str | None:
    """The teacher's family of a family with the arm, else None."""
    arm = keys.get(KEY)
    return arm[FROM] if arm else None


def teacher_weights(teacher: Point) -> str:
    """The weights a teacher point's report names: best.safetensors with `report_best` (the
    study's default), else last.safetensors."""
    name = "best.safetensors" if teacher.config.get("report_best") else "last.safetensors"
    return str(teacher.run_dir / name)


def arm_point(
    plan: Plan, fam: str, keys: dict[str, Any], teacher: Point, axis: dict[str, Any], pid: str
) -> Point:
    """The family's point at `teacher`'s x and seed (`axis`: the TrainConfig keys of that x),
    distilled from `teacher`."""
    arm = {k: v for k, v in keys[KEY].items() if k != FROM}
    layers = [family_keys(keys), arm, axis, {"teacher": teacher_weights(teacher)}]
    cfg = point_config(plan, *layers, run_id=pid, seed=teacher.seed)
    return Point(pid, fam, family_label(fam, keys), teacher.seed, teacher.x, cfg, VARIANT,
                 needs=(teacher.id,))  # fmt: skip


def arm_note(plan: Plan) -> list[str]:
    """The report's plain sentence of what the distilled arm sees, if the plan has it."""
    lines = []
    for fam, keys in plan.spec["families"].items():
        src = teacher_of(keys or {})
        if not src:
            continue
        arm = keys[KEY]
        how = arm.get("distill", "hard")
        token = (arm.get("model_args") or {}).get("distill_token")
        head = "its distillation token's head" if token else "its only head"
        teacher = family_label(src, plan.spec["families"][src])
        lines.append(
            f"The arm {family_label(fam, keys)} (distilled) learns the labels of each point's "
            f"subset and, with {head}, the {how} predictions of a teacher: the {teacher} point "
            "of the same size and seed (DeiT). It sees no image or label beyond that subset."
        )
    return lines
