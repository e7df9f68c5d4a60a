"""The convergence budget (`vitlab.study.budget`): every supervised point trains until its
validation accuracy stops improving, a validation pass about one pass over its own images (at
least `min_epoch_steps`), its cap a number of passes (at least `min_steps`); a preset without a
budget keeps its fixed steps."""

import pytest

from tests.study.test_study import DATA_SCALING, MODEL_SCALING, TRANSFER, VIT, preset
from vitlab.study.budget import Budget
from vitlab.study.plan import make_plan

BUDGET = {"patience": 5, "min_epoch_steps": 50, "max_epochs": 100, "min_steps": 2000}


@pytest.mark.parametrize(
    ("images", "batch", "epoch_steps", "steps"),
    [
        (1000, 128, 50, 5000),  # 8 steps a pass: validate every 50 (the floor)
        (6400, 128, 50, 5000),  # exactly the floor
        (10000, 128, 78, 7800),  # a pass each 78 steps, a cap of 100 passes
        (57000, 128, 445, 44500),  # the full set: not cut short
        (20, 128, 50, 5000),  # fewer images than a batch
    ],
)
def test_the_interval_and_the_cap_scale_with_the_points_images(images, batch, epoch_steps, steps):
    layer = Budget(**BUDGET).layer(images, batch)
    assert layer == {"epoch_steps": epoch_steps, "steps": steps, "patience": 5, "cooldown": 0.0}


def test_the_cap_has_a_floor():
    layer = Budget(patience=3, min_epoch_steps=10, max_epochs=5, min_steps=200).layer(1000, 100)
    assert layer == {"epoch_steps": 10, "steps": 200, "patience": 3, "cooldown": 0.0}


def test_the_cooldown_reaches_every_budgeted_point_and_a_bad_one_is_refused(tmp_path):
    from vitlab.errors import ConfigError

    spec = {**DATA_SCALING, "train": _no_steps(DATA_SCALING), "budget": {**BUDGET,
            "cooldown": 0.25}}  # fmt: skip
    plan = make_plan("data-scaling", preset(tmp_path, spec), tmp_path / "out")
    assert {p.config["cooldown"] for p in plan.points} == {0.25}
    spec["budget"]["cooldown"] = 2
    with pytest.raises(ConfigError, match=r"budget\.cooldown must be a fraction in \[0, 1\]"):
        make_plan("data-scaling", preset(tmp_path, spec), tmp_path / "out2")


def test_every_supervised_point_gets_the_budget_of_its_own_subset(tmp_path):
    budget = {**BUDGET, "min_epoch_steps": 20, "min_steps": 100}
    spec = {**DATA_SCALING, "train": _no_steps(DATA_SCALING), "budget": budget}
    spec["sizes"] = [100, 400, "all"]
    plan = make_plan("data-scaling", preset(tmp_path, spec), tmp_path / "out")
    got = {
        p.id: (p.config["epoch_steps"], p.config["steps"], p.config["patience"])
        for p in plan.points
    }
    # batch 32: 100 images are under the 20-step floor, 400 are 12 steps a pass (the floor
    # too); all of digits' 1,295 training images (359 are its test split, 10% of the rest
    # held out for validation) are 40 steps a pass
    assert got["vit-n100-s0"] == got["resnet-n400-s0"] == (20, 2000, 5)
    assert got["vit-nall-s0"] == (1295 // 32, 100 * 40, 5)


def test_the_images_of_all_are_counted_as_the_run_chooses_them(tmp_path):
    spec = {**DATA_SCALING, "train": _no_steps(DATA_SCALING), "sizes": ["all"]}
    spec["budget"] = {"min_epoch_steps": 1, "max_epochs": 2, "min_steps": 1}
    seen = []

    def count(cfg):
        seen.append(cfg.train_images)
        return 3200

    plan = make_plan("data-scaling", preset(tmp_path, spec), tmp_path / "out", count=count)
    assert seen == [None, None]  # the two families' `all` points; a size needs no counting
    assert {(p.config["epoch_steps"], p.config["steps"]) for p in plan.points} == {(100, 200)}


def test_without_a_budget_the_points_keep_their_fixed_steps(tmp_path):
    plan = make_plan("data-scaling", preset(tmp_path, DATA_SCALING), tmp_path / "out")
    assert {
        (p.config["steps"], p.config["epoch_steps"], p.config["patience"]) for p in plan.points
    } == {(6, 3, None)}
    spec = {**DATA_SCALING, "budget": None}
    plan = make_plan("data-scaling", preset(tmp_path, spec), tmp_path / "o2")
    assert {p.config["patience"] for p in plan.points} == {None}


def test_transfer_and_model_scaling_get_the_same_budget(tmp_path):
    spec = {**TRANSFER, "pretrain": {}, "target": {}, "budget": BUDGET}
    plan = make_plan("transfer", preset(tmp_path, spec), tmp_path / "out")
    by_id = {p.id: p.config for p in plan.points}
    assert by_id["five-to-five/pretrain-vit"]["patience"] == 5  # the supervised pre-training too
    assert by_id["five-to-five/vit-scratch-k5-s0"]["steps"] == 5000
    spec = {**MODEL_SCALING, "train": _no_steps(MODEL_SCALING), "budget": BUDGET}
    plan = make_plan("model-scaling", preset(tmp_path, spec), tmp_path / "o2")
    assert {p.config["patience"] for p in plan.points} == {5}


def test_a_pre_training_without_labels_keeps_its_own_fixed_budget(tmp_path):
    vit = {**VIT, "self_supervised": {"mae": {"epochs": 3}}}
    spec = {**DATA_SCALING, "train": _no_steps(DATA_SCALING), "budget": BUDGET}
    spec["families"] = {"vit": vit}
    plan = make_plan("data-scaling", preset(tmp_path, spec), tmp_path / "out")
    pre = next(p for p in plan.points if p.variant == "mae-pretrain")
    assert pre.config["patience"] is None and pre.config["steps"] is None
    assert pre.config["epochs"] == 3
    tuned = next(p for p in plan.points if p.variant == "mae")
    assert tuned.config["patience"] == 5 and tuned.config["steps"] == 5000


def _no_steps(spec: dict) -> dict:
    return {k: v for k, v in spec["train"].items() if k not in ("steps", "epoch_steps")}
