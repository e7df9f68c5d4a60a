"""The report of a study trained to convergence: per point the steps trained, the cap and why
it stopped; a point stopped by the cap flagged on the page (table, plot, a sentence) and left
out of the computed summary; a difference within the seeds' spread called no difference
(report.json files written here, not by training)."""

import pytest

from tests.study.fakes import finish
from tests.study.test_study import DATA_SCALING, TRANSFER, preset, read_csv
from vitlab import study
from vitlab.study import report as report_module
from vitlab.study.curves import Curve, versus
from vitlab.study.runner import finished_line
from vitlab.study.studies import data_scaling, model_scaling, transfer

BUDGET = {"patience": 5, "min_epoch_steps": 50, "max_epochs": 100, "min_steps": 2000}
ACC = {"vit-n100-s0": 0.60, "vit-n400-s0": 0.80, "resnet-n100-s0": 0.70, "resnet-n400-s0": 0.75}


@pytest.fixture
def capped(tmp_path, monkeypatch):
    """The tiny data-scaling plan, every point finished, vit-n400-s0 stopped by its cap."""
    spec = {**DATA_SCALING, "train": {**DATA_SCALING["train"]}, "budget": BUDGET}
    del spec["train"]["steps"], spec["train"]["epoch_steps"]
    plan = study.plan_study("data-scaling", preset(tmp_path, spec), tmp_path / "out")
    for p in plan.points:
        stop = "cap" if p.id == "vit-n400-s0" else "patience"
        steps = p.config["steps"] if stop == "cap" else 900
        finish(p, top1=ACC[p.id], steps=steps, max_steps=p.config["steps"], stopped=stop)
    marked = []
    real = report_module._mark_capped
    monkeypatch.setattr(
        report_module,
        "_mark_capped",
        lambda ax, c: (marked.append((c.label, c.capped)), real(ax, c)),
    )
    return plan, study.collect(plan.out), marked


def test_each_row_gives_the_steps_trained_the_cap_and_why_it_stopped(capped):
    plan, rep, _ = capped
    rows = {r["point"]: r for r in read_csv(rep.csv)}
    assert rows["vit-n100-s0"]["steps"] == "900" and rows["vit-n100-s0"]["max_steps"] == "5000"
    assert rows["vit-n100-s0"]["stopped"] == "patience" and rows["vit-n400-s0"]["stopped"] == "cap"
    assert rows["vit-n400-s0"]["steps"] == rows["vit-n400-s0"]["max_steps"] == "5000"
    assert rows["vit-n100-s0"]["lr"] == "0.003"
    line = finished_line(next(p for p in plan.points if p.id == "vit-n400-s0"))
    assert "5000 steps of 5000 (reached its cap: not converged)" in line
    assert "900 steps of 5000 (stopped by patience)" in finished_line(plan.points[0])


def test_a_point_stopped_by_the_cap_is_flagged_on_the_page(capped):
    _, rep, marked = capped
    page = rep.page.read_text()
    assert "1 point(s) reached the step cap</b>" in page
    assert "may not have converged: vit-n400-s0" in page
    assert "<span class='cap'>&#9888; cap</span>" in page  # its row in the table of every point
    assert "<span class='cap'>cap</span> (1 of 1)" in page  # and in the table of means
    assert ("ViT", [0, 1]) in marked and ("ResNet", [0, 0]) in marked  # ringed on the plot
    assert "until 5 validation passes in a row bring no better validation accuracy" in page


def test_the_summary_draws_no_conclusion_from_a_capped_point(capped):
    _, rep, _ = capped
    text = " ".join(rep.summary)
    assert (
        "Left out of these sentences, as not converged: vit-n400-s0 (reached the step cap" in text
    )
    assert "at 400 images" not in text  # no comparison at the capped size
    assert "At 100 images ResNet leads ViT by 10.0 points" in text
    assert "ViT: 60.0% with 100 images, 60.0% with 100" in text  # its curve without the point
    assert "ResNet: 70.0% with 100 images, 75.0% with 400" in text


def test_the_points_that_start_from_a_capped_pre_training_are_left_out_too(tmp_path):
    plan = study.plan_study("transfer", preset(tmp_path, TRANSFER), tmp_path / "out")
    for p in plan.points:
        finish(p, top1=0.5, stopped="cap" if p.variant == "pretrain" else "patience")
    rep = study.collect(plan.out)
    text = " ".join(rep.summary)
    assert "five-to-five/vit-pretrained-k5-s0 (starts from five-to-five/pretrain-vit, which" in text
    assert "vit-scratch" not in text.split("Left out")[1]
    assert "1 point(s) reached the step cap</b>" in rep.page.read_text()


def test_a_summary_with_every_point_left_out_says_so(tmp_path):
    plan = study.plan_study("data-scaling", preset(tmp_path, DATA_SCALING), tmp_path / "out")
    for p in plan.points:
        finish(p, stopped="cap")
    assert study.collect(plan.out).summary[0] == (
        "No point on a curve has converged yet: nothing to conclude."
    )


def test_without_a_capped_point_nothing_is_flagged(tmp_path):
    plan = study.plan_study("data-scaling", preset(tmp_path, DATA_SCALING), tmp_path / "out")
    for p in plan.points:
        finish(p, top1=ACC[p.id], stopped="budget", steps=6, max_steps=6)
    rep = study.collect(plan.out)
    assert "reached the step cap" not in rep.page.read_text()
    assert not any("Left out" in s for s in rep.summary)
    assert "fixed steps its preset gives it" in rep.page.read_text()


# ------------------------------------------------------------------------------ the spread
def _curve(label, means, spreads, variant="", xs=(100, 1000), names=None):
    names = names or [str(x) for x in xs]
    return Curve(label, "", variant, list(xs), list(means), list(spreads), [2] * len(xs), names)


def test_a_difference_within_the_spread_is_no_difference():
    assert "show no difference (80.0% vs 79.0%, within the seed spread of 1.5)" in versus(
        "A", 80.0, "B", 79.0, 1.5, "100 images"
    )
    assert "A leads B by 1.0 points" in versus("A", 80.0, "B", 79.0, 0.5, "100 images")
    assert "A leads B by 1.0 points" in versus("A", 80.0, "B", 79.0, 0.0, "100 images")


def test_data_scaling_calls_a_lead_within_the_spread_no_difference():
    vit = _curve("ViT", [70.0, 90.0], [2.0, 0.3])
    cnn = _curve("CNN", [71.0, 85.0], [1.5, 0.2])
    lines = data_scaling.summary([vit, cnn])
    assert lines[0].startswith("At 100 images CNN and ViT show no difference (71.0% vs 70.0%")
    assert "at 1,000 images ViT leads CNN by 5.0 points" in lines[0]
    assert "cross" in lines[0] and "(ViT ahead)" in lines[0]  # a tie is no crossing


def test_transfer_and_model_scaling_use_the_same_rule():
    pre = _curve("ViT", [60.0, 80.0], [1.0, 1.0], variant="pretrained", xs=(10, 50))
    scratch = _curve("ViT", [59.5, 70.0], [1.0, 1.0], variant="scratch", xs=(10, 50))
    mae = _curve("ViT", [65.0, 81.0], [1.0, 1.0], variant="mae", xs=(10, 50))
    text = " ".join(transfer.summary([pre, scratch, mae]))
    assert "at 10 per class supervised pre-training and from scratch show no difference" in text
    assert "at 50 per class supervised pre-training leads from scratch by 10.0 points" in text
    assert "pre-training without labels (MAE) leads from scratch by 5.5 points" in text
    a = _curve("ViT", [80.0, 90.0], [3.0, 3.0], xs=(1.0, 10.0), names=["s", "l"])
    b = _curve("CNN", [81.0, 89.0], [0.5, 0.5], xs=(1.0, 10.0), names=["s", "l"])
    assert "show no difference" in model_scaling.summary([a, b])[-1]


def test_the_arms_without_labels_are_named_in_the_summary_and_the_legend():
    c = _curve("ViT", [60.0, 80.0], [0.0, 0.0], variant="mae")
    assert c.name == "ViT (pre-trained without labels, MAE)"
    cnn = _curve("CNN", [70.0, 78.0], [0.0, 0.0])
    vit = _curve("ViT", [50.0, 75.0], [0.0, 0.0])
    text = " ".join(data_scaling.summary([vit, cnn, c]))
    assert "ViT (pre-trained without labels, MAE) leads CNN by 2.0 points (80.0% vs 78.0%)" in text
