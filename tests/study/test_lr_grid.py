"""The learning rate per family from a grid (`vitlab.study.lr_grid`): grid points at the
reference values, every point of the curve needs its nearest grid and runs with the rate of the
best validation accuracy, resolved into its point.yaml at run time (report.json files written
here, not by training)."""

import pytest
import yaml

from tests.study.fakes import finish
from tests.study.test_study import DATA_SCALING, MODEL_SCALING, TRANSFER, VIT, preset
from vitlab import study
from vitlab.cli.main import main
from vitlab.study.lr_grid import GRID, grid_lines
from vitlab.study.plan import POINT_FILE, make_plan, read_plan

GRID_KEY = {"lr": [1e-3, 3e-3], "at": [100]}


def _spec(grid: dict, sizes: list) -> dict:
    return {
        **DATA_SCALING,
        "families": {**DATA_SCALING["families"], "vit": {**VIT, "lr_grid": grid}},
        "sizes": sizes,
    }


def test_grid_points_train_at_the_reference_and_the_curve_needs_them(tmp_path):
    plan = make_plan(
        "data-scaling", preset(tmp_path, _spec(GRID_KEY, [100, 400])), tmp_path / "out"
    )
    grid = [p for p in plan.points if p.variant == GRID]
    assert [p.id for p in grid] == ["lr-grid/vit-n100-s0-lr0.001", "lr-grid/vit-n100-s0-lr0.003"]
    assert [p.config["lr"] for p in grid] == [1e-3, 3e-3]
    assert all(p.config["train_images"] == 100 and p.config["seed"] == 0 for p in grid)
    assert plan.points[:2] == grid  # they run first
    ids = tuple(p.id for p in grid)
    for p in plan.points:
        if p.family == "vit" and p.variant != GRID:
            assert p.lr_from == ids and set(ids) <= set(p.needs)
        if p.family == "resnet":  # a family without a grid keeps its fixed rate
            assert p.lr_from == () and p.needs == ()


def test_each_point_takes_the_nearest_reference_a_tie_the_earlier(tmp_path):
    spec = _spec({"lr": [1e-3, 3e-3], "at": [100, 400]}, [100, 200, 400, 800])
    spec["seeds"] = [0, 1]
    plan = make_plan("data-scaling", preset(tmp_path, spec), tmp_path / "out")
    grid = [p for p in plan.points if p.variant == GRID]
    assert len(grid) == 4 and {p.seed for p in grid} == {0}  # the first seed only
    ref = {p.id: p.lr_from[0].split("-")[2] for p in plan.points if p.lr_from}
    assert ref["vit-n200-s1"] == "n100" and ref["vit-n800-s0"] == "n400"
    assert ref["vit-n400-s1"] == "n400" and ref["vit-n100-s0"] == "n100"


def test_without_at_every_axis_value_is_its_own_reference(tmp_path):
    vit = {**MODEL_SCALING["families"]["vit"], "lr_grid": {"lr": [1e-3, 3e-3]}}
    spec = {**MODEL_SCALING, "families": {"vit": vit}}
    plan = make_plan("model-scaling", preset(tmp_path, spec), tmp_path / "out")
    grid = [p.id for p in plan.points if p.variant == GRID]
    assert grid == [
        f"lr-grid/vit-{m}-s0-lr{lr}" for m in ("d16", "d32") for lr in ("0.001", "0.003")
    ]
    assert next(p for p in plan.points if p.id == "vit-d32-s0").lr_from == tuple(grid[2:])


def test_every_arm_of_transfer_has_its_own_grid(tmp_path):
    spec = {**TRANSFER, "families": {"vit": {**VIT, "lr_grid": {"lr": [1e-3, 3e-3], "at": [5]}}}}
    plan = make_plan("transfer", preset(tmp_path, spec), tmp_path / "out")
    grid = {p.id: p for p in plan.points if p.variant == GRID}
    assert sorted(grid) == [
        f"lr-grid/five-to-five/vit-{arm}-k5-s0-lr{lr}"
        for arm in ("pretrained", "scratch")
        for lr in ("0.001", "0.003")
    ]
    tuned = grid["lr-grid/five-to-five/vit-pretrained-k5-s0-lr0.001"]
    assert tuned.needs == ("five-to-five/pretrain-vit",) and tuned.config["init_from"]
    assert "pretrain-vit" not in {p.id for p in plan.points if p.lr_from}


def test_the_runner_resolves_the_best_rate_into_point_yaml_and_waits_until_then(tmp_path, capsys):
    path = preset(tmp_path, _spec(GRID_KEY, [100, 400]))
    out = tmp_path / "out"
    plan = study.plan_study("data-scaling", path, out)
    lines, later = study.print_commands(plan)
    assert len(lines) == 2 + 2  # the grid and the family without one
    assert {p.id for p in later} == {"vit-n100-s0", "vit-n400-s0"}
    point = out / "points" / "vit-n400-s0" / POINT_FILE
    assert yaml.safe_load(point.read_text())["lr"] == 3e-3  # the preset's, until the grid is done

    low, high = (p for p in plan.points if p.variant == GRID)
    finish(low, val_acc=0.71)
    finish(high, val_acc=0.64)
    plan = study.plan_study("data-scaling", path, out)  # a rerun, or the runner before a point
    assert yaml.safe_load(point.read_text())["lr"] == 1e-3  # the grid's choice
    planned = {p.id: p.config["lr"] for p in read_plan(out).points}
    assert planned["vit-n400-s0"] == 3e-3  # study.yaml keeps the preset's rate
    lines, later = study.print_commands(plan)
    assert not later and any("vit-n400-s0" in line for line in lines)

    rep = study.collect(out, "data-scaling")
    assert rep.grid == grid_lines(plan)
    assert "0.001 (71.00%) <- chosen, 0.003 (64.00%)" in rep.grid[0]
    assert "Learning rates" in rep.page.read_text()
    assert main(["study", "data-scaling", "--collect", str(out)]) == 0
    assert "<- chosen" in capsys.readouterr().out


def test_a_tie_goes_to_the_first_rate_of_the_grid(tmp_path):
    plan = make_plan("data-scaling", preset(tmp_path, _spec(GRID_KEY, [100])), tmp_path / "out")
    from vitlab.study.lr_grid import resolved_config

    for g in (p for p in plan.points if p.variant == GRID):
        finish(g, val_acc=0.5)
    vit = next(p for p in plan.points if p.id == "vit-n100-s0")
    assert resolved_config(plan, vit)["lr"] == 1e-3


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_points_writes_the_choice_before_the_point_runs(tmp_path, monkeypatch, jobs):
    """The runner, with training replaced by a function that reads the point.yaml it would run."""
    from vitlab.study import runner

    plan = study.plan_study(
        "data-scaling", preset(tmp_path, _spec(GRID_KEY, [100])), tmp_path / "o"
    )
    ran = {}
    accs = {"lr-grid/vit-n100-s0-lr0.001": 0.9, "lr-grid/vit-n100-s0-lr0.003": 0.2}

    def fake_train(p):
        ran[p.id] = yaml.safe_load((p.run_dir / POINT_FILE).read_text())["lr"]
        finish(p, val_acc=accs.get(p.id, 0.5))
        return None

    monkeypatch.setattr(runner, "_in_process", fake_train)
    monkeypatch.setattr(runner, "_subprocess", lambda threads: fake_train)
    outcome = runner.run_points(plan, jobs)
    assert not outcome.failed and not outcome.waiting
    assert ran["vit-n100-s0"] == 1e-3 and ran["resnet-n100-s0"] == 3e-3  # the preset's
    assert ran["lr-grid/vit-n100-s0-lr0.003"] == 3e-3
