"""The arm "pre-trained without labels": a family pre-trained on all the training (or source)
images with a self-supervised objective, the paper's masked patch prediction (`mpp`, section
4.6) or a masked autoencoder (`mae`, He et al. 2022), then fine-tuned on each labelled subset
like the family's other points. Shared by data-scaling and transfer, from a family key:

    families:
      vit:
        self_supervised:        # objective -> TrainConfig keys of its pre-training
          mae: {epochs: 20, lr: 1.5e-3}

One pre-training point per objective (variant `mae-pretrain`, on no curve) with no
`train_images` (every training image, labels ignored; the same `val_split`, so the validation
images stay out), and the budget its own keys give it (epochs or steps; the study's `budget`
stops on validation accuracy, which it has not; its keys may add `patience`, which `fit` then
applies to its validation loss); then the arm's points (variant `mae`), which start from its
`last.safetensors` (the encoder: a new head, so no `dont_load`) with the study's `finetune` keys.
"""

from __future__ import annotations

from typing import Any

from vitlab.errors import ConfigError
from vitlab.study.keys import check_mapping, check_train_keys
from vitlab.study.points import ALL, Plan, Point, family_keys, family_label, point_config

KEY = "self_supervised"  # the family key
OBJECTIVES = ("mae", "mpp")
NAMES = {"mae": "MAE, a masked autoencoder", "mpp": "MPP, the paper's masked patch prediction"}
# TrainConfig keys a pre-training may not set: the arm sets them
RESERVED = {
    "objective": f"the objective is the key of {KEY} (mae or mpp)",
    "train_images": "a pre-training without labels sees every training image",
    "train_per_class": "a pre-training without labels sees every training image",
    "init_from": "a pre-training without labels starts from scratch",
}
PRETRAIN = "-pretrain"  # the variant of a pre-training point: OBJECTIVE-pretrain
VARIANTS = OBJECTIVES  # the arms' variants (their curves)
OFF_CURVE = tuple(o + PRETRAIN for o in OBJECTIVES)


def check_arm(where: str, value: Any) -> None:
    """`value` maps objectives (mae, mpp) to the TrainConfig keys of their pre-training."""
    hint = "e.g. {mae: {epochs: 20}}"
    for obj, keys in check_mapping(where, value, "objectives to keys", hint).items():
        if obj not in OBJECTIVES:
            raise ConfigError(f"{where}.{obj}: the objectives are {', '.join(OBJECTIVES)}")
        check_train_keys(f"{where}.{obj}", {} if keys is None else keys, RESERVED)


def arms(keys: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A family's objectives and the keys of their pre-training, in the preset's order."""
    return {obj: pre or {} for obj, pre in (keys.get(KEY) or {}).items()}


def pretrain_point(
    plan: Plan, fam: str, keys: dict[str, Any], obj: str, seed: int, *, data: dict | None,
    pid: str, protocol: str = "",
) -> Point:  # fmt: skip
    """A family's pre-training with objective `obj` on every image of `data` (TrainConfig keys:
    where its images come from), labels ignored."""
    layers = [family_keys(keys), data, arms(keys)[obj], {"objective": obj}]
    cfg = point_config(plan, *layers, run_id=pid, seed=seed)
    label = family_label(fam, keys)
    return Point(pid, fam, label, seed, ALL, cfg, obj + PRETRAIN, protocol)


def start_from(pre: Point) -> dict[str, Any]:
    """The layer of a point that fine-tunes `pre`'s encoder: its last weights, which hold no
    classification head (loading gives a new one; a `dont_load` of the head from the study's
    `finetune` keys, meant for a supervised pre-training, would match nothing: it is cleared)."""
    return {"init_from": str(pre.run_dir / "last.safetensors"), "dont_load": []}


def arm_note(plan: Plan, sees: str) -> list[str]:
    """The report's plain sentence of what the arm sees, if the plan has it (`sees`: the
    study's words for its images)."""
    objs = list(dict.fromkeys(p.variant for p in plan.points if p.variant in VARIANTS))
    if not any(p.variant in OFF_CURVE for p in plan.points):
        return []
    names = "; ".join(NAMES[o] for o in objs)
    return [f"The arm pre-trained without labels ({names}) sees {sees}."]
