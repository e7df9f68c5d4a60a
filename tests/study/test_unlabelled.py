"""The arm "pre-trained without labels" (`vitlab.study.unlabelled`): in data-scaling, per
objective and seed one pre-training on every training image, then a fine-tuning per size; in
transfer, one pre-training on the source images per protocol, then a target run per k and seed;
the page says what the arm sees."""

import pytest

from tests.study.fakes import finish
from tests.study.test_study import DATA_SCALING, TRANSFER, VIT, preset
from vitlab import study
from vitlab.study.plan import make_plan

SSL = {"mae": {"epochs": 2, "mask_ratio": 0.6}, "mpp": {"steps": 5}}


def test_data_scaling_pretrains_on_every_image_per_seed_then_fine_tunes_each_size(tmp_path):
    spec = {**DATA_SCALING, "seeds": [0, 1], "finetune": {"lr": 1e-3}}
    spec["families"] = {**DATA_SCALING["families"], "vit": {**VIT, "self_supervised": SSL}}
    plan = make_plan("data-scaling", preset(tmp_path, spec), tmp_path / "out")
    by_id = {p.id: p for p in plan.points}
    for obj in ("mae", "mpp"):
        for seed in (0, 1):
            pre = by_id[f"vit-{obj}-pretrain-s{seed}"]
            assert pre.variant == f"{obj}-pretrain" and pre.x == "all"
            assert pre.config["objective"] == obj and pre.config["train_images"] is None
            assert pre.config["val_split"] == 0.1  # the validation images stay out
            for size in (100, 400):
                tuned = by_id[f"vit-{obj}-n{size}-s{seed}"]
                assert tuned.variant == obj and tuned.needs == (pre.id,)
                assert tuned.config["init_from"] == str(pre.run_dir / "last.safetensors")
                assert tuned.config["objective"] == "supervised" and tuned.config["lr"] == 1e-3
                assert tuned.config["train_images"] == size
    assert by_id["vit-mae-pretrain-s0"].config["mask_ratio"] == 0.6
    assert by_id["vit-mpp-pretrain-s1"].config["steps"] == 5
    assert not any(p.variant for p in plan.points if p.family == "resnet")  # asked by vit only
    assert by_id["vit-n100-s0"].config["lr"] == 3e-3  # `finetune` is the arm's only


def test_transfer_pretrains_without_labels_on_the_source_beside_the_supervised_one(tmp_path):
    spec = {**TRANSFER, "families": {"vit": {**VIT, "self_supervised": {"mae": {"epochs": 2}}}}}
    plan = make_plan("transfer", preset(tmp_path, spec), tmp_path / "out")
    by_id = {p.id: p for p in plan.points}
    pre = by_id["five-to-five/mae-pretrain-vit"]
    assert pre.config["objective"] == "mae" and pre.config["classes"] == (0, 1, 2, 3, 4)
    assert (
        pre.config["train_per_class"] is None and pre.seed == 0 and pre.protocol == "five-to-five"
    )
    arm = [p for p in plan.points if p.variant == "mae"]
    assert sorted(p.id for p in arm) == [
        f"five-to-five/vit-mae-k{k}-s{s}" for k in (5, "all") for s in (0, 1)
    ]
    for p in arm:
        assert p.needs == (pre.id,) and p.config["init_from"].endswith(
            "mae-pretrain-vit/last.safetensors"
        )
        assert (
            p.config["classes"] == (5, 6, 7, 8, 9) and p.config["lr"] == 1e-3
        )  # the target, finetune
    assert len(plan.points) == 2 + 3 * 2 * 2  # two pre-trainings; three arms, two k, two seeds


def test_the_page_says_what_the_arm_sees(tmp_path):
    spec = {**DATA_SCALING, "families": {"vit": {**VIT, "self_supervised": {"mae": {"epochs": 1}}}}}
    plan = study.plan_study("data-scaling", preset(tmp_path, spec), tmp_path / "out")
    for p in plan.points:
        if p.variant == "mae-pretrain":
            finish(p, top1=None, objective="mae", val_loss=0.3, best={})
        else:
            finish(p, top1=0.5 + 0.1 * (p.variant == "mae"))
    rep = study.collect(plan.out)
    page = rep.page.read_text()
    assert (
        "sees labels only from each point&#x27;s subset, and images from the whole training set"
        in page
    )
    assert "ViT (pre-trained without labels, MAE)" in " ".join(rep.summary)
    rows = {r["point"]: r for r in rep.rows}
    assert rows["vit-mae-pretrain-s0"]["test_top1"] is None  # on no curve
    plain = make_plan("data-scaling", preset(tmp_path, DATA_SCALING), tmp_path / "o2")
    assert study.report.build_report(plain).page.read_text().count("without labels") == 0


@pytest.mark.slow
def test_a_tiny_study_with_the_arm_without_labels_runs_end_to_end(tmp_path):
    """digits: the ViT pre-trained by MAE on every training image, then fine-tuned on each
    subset beside the same ViT from scratch, each to convergence under a tiny budget."""
    import json

    from tests.study.test_study import read_csv

    vit = {**VIT, "self_supervised": {"mae": {"steps": 4, "epoch_steps": 2}}}
    train = {k: v for k, v in DATA_SCALING["train"].items() if k not in ("steps", "epoch_steps")}
    spec = {**DATA_SCALING, "train": train, "families": {"vit": vit}}
    spec["budget"] = {"patience": 1, "min_epoch_steps": 2, "max_epochs": 2, "min_steps": 1}
    plan = study.plan_study("data-scaling", preset(tmp_path, spec), tmp_path / "out")
    outcome, rep = study.run_study(plan)
    assert not outcome.failed and not outcome.waiting and len(outcome.trained) == 5
    rows = {r["point"]: r for r in read_csv(rep.csv)}
    pre = json.loads((plan.out / "points" / "vit-mae-pretrain-s0" / "report.json").read_text())
    assert pre["objective"] == "mae" and pre["top1"] is None and pre["val_loss"] is not None
    assert pre["train_images"] == 1295 and pre["steps"] == 4  # every training image, its steps
    assert rows["vit-mae-pretrain-s0"]["test_top1"] == ""
    for size in (100, 400):
        tuned = rows[f"vit-mae-n{size}-s0"]
        assert tuned["variant"] == "mae" and tuned["test_top1"] != ""
        assert tuned["stopped"] in ("patience", "cap") and int(tuned["train_images"]) == size
    log = (plan.out / "points" / "vit-mae-n100-s0" / "train.log").read_text()
    assert "vit-mae-pretrain-s0/last.safetensors" in log
    page = rep.page.read_text()
    assert "pre-trained without labels" in page and "images from the whole training set" in page
    assert "ViT (pre-trained without labels, MAE)" in page  # its own curve in the means
    assert "The arm pre-trained without labels (MAE, a masked autoencoder) sees" in page
