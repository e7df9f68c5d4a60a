"""`vitlab study` end to end on scikit-learn's digits: tiny studies whose points train in a
second, run here, resumed after a kill, run by the shell from --print-commands, and collected."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitlab import load_checkpoint, study
from vitlab.cli.main import main
from vitlab.errors import ConfigError
from vitlab.evaluate import evaluate_checkpoint
from vitlab.study.plan import POINT_FILE
from vitlab.study.runner import run_points
from vitlab.train import run as train_run

VIT = {"label": "ViT", "model": "vit_test", "model_args": {"img_size": 8, "patch_size": 4}}
RESNET = {
    "label": "ResNet",
    "model": "bit_r50x1",
    "model_args": {"layers": [1, 1], "stem_type": "small", "stem_width": 8, "gn_groups": 4},
}
TRAIN = {"img_size": 8, "batch_size": 32, "lr": 3e-3, "report_best": True, "precision": "fp32"}
DATA_SCALING = {
    "study": "data-scaling",
    "train": {**TRAIN, "data": "digits", "val_split": 0.1, "steps": 6, "epoch_steps": 3},
    "families": {"vit": VIT, "resnet": RESNET},
    "sizes": [100, 400],
    "seeds": [0],
}
TRANSFER = {
    "study": "transfer",
    "train": TRAIN,
    "families": {"vit": VIT},
    "pretrain": {"steps": 6, "epoch_steps": 3},
    "target": {"steps": 4, "epoch_steps": 2},
    "finetune": {"lr": 1e-3, "dont_load": ["head\\..*"]},
    "protocols": {
        "five-to-five": {
            "source": {"data": "digits", "val_split": 0.1, "classes": [0, 1, 2, 3, 4]},
            "target": {"data": "digits", "val_split": 0.1, "classes": [5, 6, 7, 8, 9]},
        }
    },
    "shots": [5, "all"],
    "seeds": [0, 1],
}
MODEL_SCALING = {
    "study": "model-scaling",
    "train": {**TRAIN, "data": "digits", "val_split": 0.1, "steps": 4, "epoch_steps": 2},
    "families": {
        "vit": {**VIT, "models": {"d16": {"model_args": {"embed_dim": 16}}, "d32": {}}},
        "resnet": {**RESNET, "models": {"w4": {"model_args": {"stem_width": 4}}, "w8": {}}},
    },
    "seeds": [0],
}


def preset(tmp_path: Path, spec: dict) -> str:
    import yaml

    path = tmp_path / f"{spec['study']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def as_value(text: str):
    """A CSV cell as Python reads a number back ('' is None)."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny data-scaling study, run once for the tests below."""
    tmp = tmp_path_factory.mktemp("study")
    plan = study.plan_study("data-scaling", preset(tmp, DATA_SCALING), tmp / "out")
    outcome, rep = study.run_study(plan)
    return plan, outcome, rep


def test_a_tiny_study_writes_the_csv_the_png_and_the_page(finished):
    _, outcome, rep = finished
    assert len(outcome.trained) == 4 and not outcome.failed
    rows = read_csv(rep.csv)
    assert [(r["family"], r["x"]) for r in rows] == [
        ("vit", "100"), ("vit", "400"), ("resnet", "100"), ("resnet", "400"),
    ]  # fmt: skip
    assert [int(r["train_images"]) for r in rows] == [100, 400, 100, 400]
    with Image.open(rep.plot) as im:
        assert im.format == "PNG" and im.size[0] > 300
    page = rep.page.read_text()
    for line in rep.summary:
        assert line.replace("'", "&#x27;") in page
    assert "data-scaling.png" in page and "vit-n400-s0" in page
    assert any("ViT" in s and "ResNet" in s for s in rep.summary)


def test_every_table_value_is_the_points_report(finished):
    plan, _, rep = finished
    for row in read_csv(rep.csv):
        report = json.loads((plan.out / "points" / row["point"] / "report.json").read_text())
        assert as_value(row["test_top1"]) == report["top1"]
        assert as_value(row["test_top5"]) == report["top5"]
        assert as_value(row["best_val_acc"]) == report["best"]["val_acc"]
        assert as_value(row["best_epoch"]) == report["best"]["epoch"]
        assert as_value(row["params"]) == report["params"]
        assert as_value(row["steps"]) == report["steps"] == 6
        assert as_value(row["wall_minutes"]) == report["wall_minutes"]
        assert row["weights"] == report["weights"] and row["weights"].endswith("best.safetensors")


def test_vitlab_eval_on_a_points_checkpoint_gives_the_tables_number(finished):
    _, _, rep = finished
    row = read_csv(rep.csv)[3]
    got = evaluate_checkpoint(load_checkpoint(row["weights"]), "digits")
    assert got["top1"] == as_value(row["test_top1"])


def test_rerunning_a_finished_study_trains_nothing(finished):
    plan, _, rep = finished
    stamps = {p.id: (p.run_dir / "report.json").stat().st_mtime_ns for p in plan.points}
    again = study.plan_study("data-scaling", plan.preset, plan.out)
    outcome, rep2 = study.run_study(again)
    assert outcome.trained == [] and len(outcome.skipped) == 4
    assert stamps == {p.id: (p.run_dir / "report.json").stat().st_mtime_ns for p in plan.points}
    assert read_csv(rep2.csv) == read_csv(rep.csv)


def test_a_killed_study_resumes_the_half_trained_point_and_skips_the_finished(
    tmp_path, monkeypatch
):
    plan = study.plan_study("data-scaling", preset(tmp_path, DATA_SCALING), tmp_path / "out")
    real = train_run._end_of_epoch
    calls = []

    def killed_in_the_third_points_first_epoch(cfg, state, *args, **kwargs):
        real(cfg, state, *args, **kwargs)  # the checkpoint of this epoch is written
        calls.append(cfg.out)
        if cfg.out.endswith("resnet-n100-s0"):
            raise KeyboardInterrupt

    monkeypatch.setattr(train_run, "_end_of_epoch", killed_in_the_third_points_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_points(plan)
    monkeypatch.setattr(train_run, "_end_of_epoch", real)
    done = [p for p in plan.points if (p.run_dir / "report.json").is_file()]
    assert [p.id for p in done] == ["vit-n100-s0", "vit-n400-s0"]
    stamps = {p.id: (p.run_dir / "report.json").stat().st_mtime_ns for p in done}

    outcome = run_points(study.plan_study("data-scaling", plan.preset, plan.out))
    assert outcome.skipped == ["vit-n100-s0", "vit-n400-s0"]
    assert outcome.trained == ["resnet-n100-s0", "resnet-n400-s0"]
    assert stamps == {p.id: (p.run_dir / "report.json").stat().st_mtime_ns for p in done}
    log = (plan.out / "points" / "resnet-n100-s0" / "train.log").read_text()
    assert "resumed" in log and "at step 3 of 6" in log
    report = json.loads((plan.out / "points" / "resnet-n100-s0" / "report.json").read_text())
    assert report["steps"] == 6 and report["epochs"] == 2


@pytest.mark.slow
def test_a_study_killed_with_sigkill_continues_where_it_stopped(tmp_path):
    """The real thing: `vitlab study` in a process of its own, killed (SIGKILL) once the first
    point has finished, then run again."""
    import signal
    import time

    out = tmp_path / "out"
    spec = {**DATA_SCALING, "train": {**DATA_SCALING["train"], "steps": 40, "epoch_steps": 4}}
    argv = [sys.executable, "-m", "vitlab", "study", "data-scaling", "--preset",
            preset(tmp_path, spec), "--out", str(out), "-q"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "points" / "vit-n100-s0" / "report.json"
    deadline = time.monotonic() + 120
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.is_file()
    stamp = first.stat().st_mtime_ns
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first.stat().st_mtime_ns == stamp  # never retrained
    plan = study.plan.read_plan(out)
    assert all((p.run_dir / "report.json").is_file() for p in plan.points)
    assert len(read_csv(out / "results.csv")) == 4


@pytest.mark.slow
def test_print_commands_run_by_the_shell_then_collect_gives_the_same_table(finished, tmp_path):
    _, _, rep = finished
    out = tmp_path / "elsewhere"
    plan = study.plan_study("data-scaling", preset(tmp_path, DATA_SCALING), out)
    lines, later = study.print_commands(plan)
    assert len(lines) == 4 and not later
    assert all(line.startswith("vitlab train --config ") for line in lines)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in lines:
        subprocess.run(["bash", "-c", line], check=True, env=env, capture_output=True)
    assert study.print_commands(plan)[0] == []  # nothing left to run
    collected = study.collect(out, "data-scaling")
    same = ["family", "x", "seed", "params", "train_images", "steps", "test_top1", "best_val_acc"]
    here = [{k: r[k] for k in same} for r in read_csv(rep.csv)]
    assert [{k: r[k] for k in same} for r in read_csv(collected.csv)] == here


def test_transfer_fine_tunes_from_the_pretraining_and_evaluates_on_the_target_classes(tmp_path):
    plan = study.plan_study("transfer", preset(tmp_path, TRANSFER), tmp_path / "out")
    ids = [p.id for p in plan.points]
    assert ids[0] == "five-to-five/pretrain-vit" and len(ids) == 1 + 2 * 2 * 2
    outcome, rep = study.run_study(plan)
    assert not outcome.failed
    rows = {r["point"]: r for r in read_csv(rep.csv)}
    tuned = rows["five-to-five/vit-pretrained-k5-s1"]
    assert tuned["variant"] == "pretrained" and as_value(tuned["train_images"]) == 25
    config = (
        plan.out / "points" / "five-to-five" / "vit-pretrained-k5-s1" / "config.yaml"
    ).read_text()
    assert "pretrain-vit/best.safetensors" in config
    # the fine-tuned model knows the target's five classes, and eval finds them in `digits`
    model = load_checkpoint(tuned["weights"])
    assert model.cfg.class_names == ("5", "6", "7", "8", "9")
    assert evaluate_checkpoint(model, "digits")["top1"] == as_value(tuned["test_top1"])
    assert any("supervised pre-training" in s and "from scratch" in s for s in rep.summary)


def test_model_scaling_puts_each_model_at_its_training_compute(tmp_path):
    plan = study.plan_study("model-scaling", preset(tmp_path, MODEL_SCALING), tmp_path / "out")
    _, rep = study.run_study(plan)
    rows = read_csv(rep.csv)
    assert [r["x"] for r in rows] == ["d16", "d32", "w4", "w8"]
    for r in rows:
        want = 3 * as_value(r["gflops_per_image"]) * 4 * 32 / 1e6
        assert as_value(r["train_pflops"]) == pytest.approx(want)
    assert as_value(rows[0]["params"]) < as_value(rows[1]["params"])
    assert any("PFLOPs" in s for s in rep.summary)


def test_the_distilled_arm_learns_from_the_resnet_of_its_own_subset_and_seed(tmp_path):
    """DeiT in the data-scaling study: each distilled point's teacher is the ResNet point of the
    same size and seed (its published weights), so the teacher's figures in the student's
    report are that point's own test top-1."""
    arm = {"from": "resnet", "model_args": {"distill_token": True}, "distill": "hard"}
    spec = {**DATA_SCALING, "families": {"vit": {**VIT, "distilled": arm}, "resnet": RESNET},
            "sizes": [100], "seeds": [0, 1]}  # fmt: skip
    plan = study.plan_study("data-scaling", preset(tmp_path, spec), tmp_path / "out")
    by_id = {p.id: p for p in plan.points}
    student = by_id["vit-distilled-n100-s1"]
    assert student.needs == ("resnet-n100-s1",) and student.variant == "distilled"
    assert student.config["teacher"].endswith("resnet-n100-s1/best.safetensors")
    assert student.config["model_args"] == {"img_size": 8, "patch_size": 4, "distill_token": True}
    assert by_id["vit-n100-s1"].config["teacher"] is None
    outcome, rep = study.run_study(plan)
    assert not outcome.failed and len(outcome.trained) == 6
    rows = {r["point"]: r for r in read_csv(rep.csv)}
    report = json.loads((student.run_dir / "report.json").read_text())
    assert report["teacher"]["top1"] == as_value(rows["resnet-n100-s1"]["test_top1"])
    assert rows["vit-distilled-n100-s1"]["variant"] == "distilled"
    assert any("ViT (distilled, DeiT)" in s and "ResNet" in s for s in rep.summary)
    assert "same size and seed (DeiT)" in rep.page.read_text()


@pytest.mark.parametrize(
    ("arm", "message"),
    [
        ({"from": "hybrid"}, r"distilled\.from must name .* \(it has: resnet\)"),
        ({"from": "vit"}, "another family"),
        ({"from": "resnet", "teacher": "t.safetensors"}, "teacher cannot be set here"),
        ({"from": "resnet", "distil": "soft"}, "did you mean distill"),
    ],
)
def test_a_bad_distilled_arm_is_refused_before_anything_trains(tmp_path, arm, message):
    spec = {**DATA_SCALING, "families": {"vit": {**VIT, "distilled": arm}, "resnet": RESNET}}
    with pytest.raises(ConfigError, match=message):
        study.plan_study("data-scaling", preset(tmp_path, spec), tmp_path / "out")


# ------------------------------------------------------------------------------ the plan
def test_layers_apply_in_order_and_set_reaches_study_keys_and_every_point(tmp_path):
    spec = {**DATA_SCALING, "families": {"vit": {**VIT, "lr": 1e-2}, "resnet": RESNET}}
    sets = {"sizes": [50], "families.resnet.lr": 5e-4, "clip_grad": 0.5, "train.steps": 9}
    plan = study.plan_study("data-scaling", preset(tmp_path, spec), tmp_path / "out", sets)
    by_id = {p.id: p.config for p in plan.points}
    assert sorted(by_id) == ["resnet-n50-s0", "vit-n50-s0"]
    assert by_id["vit-n50-s0"]["lr"] == 1e-2 and by_id["resnet-n50-s0"]["lr"] == 5e-4
    assert {c["clip_grad"] for c in by_id.values()} == {0.5}
    assert {c["steps"] for c in by_id.values()} == {9}
    written = (plan.out / "points" / "vit-n50-s0" / POINT_FILE).read_text()
    assert "train_images: 50" in written


def test_a_key_of_a_family_the_preset_does_not_have_is_refused(tmp_path):
    spec = {**DATA_SCALING, "families": {"vit": VIT, "resnet": RESNET}}
    with pytest.raises(ConfigError, match=r"no families\.hybrid \(it has: vit, resnet\)"):
        study.plan_study("data-scaling", preset(tmp_path, spec), tmp_path / "out",
                         {"families.hybrid.lr_grid": None})  # fmt: skip


def test_a_folder_that_holds_another_plan_is_refused(tmp_path):
    path = preset(tmp_path, DATA_SCALING)
    study.plan_study("data-scaling", path, tmp_path / "out")
    with pytest.raises(Exception, match="vit-n100-s0 was planned with a different config"):
        study.plan_study("data-scaling", path, tmp_path / "out", {"lr": 0.1})
    study.plan_study("data-scaling", path, tmp_path / "out", {"sizes": [100, 200]})  # new points
    study.plan_study("data-scaling", path, tmp_path / "out", {"download": True})  # bookkeeping


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["study", "scaling"], "invalid choice: 'scaling'"),
        (["study", "data-scaling", "--preset", "tiny"], "no data-scaling preset named 'tiny'"),
        (["study", "data-scaling", "--set", "sizes=[100,5000]"], "train_images=5000 is more"),
        (["study", "transfer", "--set", "shots=[200]"], "train_per_class=200: class '5' has only"),
        (["study", "data-scaling", "--set", "sizes=[0]"], "sizes must be a list of whole numbers"),
        (["study", "data-scaling", "--set", "seeds=1"], "seeds must be a list"),
        (["study", "data-scaling", "--set", "stesp=10"], "(did you mean steps?)"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    specs = {"data-scaling": DATA_SCALING, "transfer": TRANSFER}
    name = argv[1]
    if name in specs and "--preset" not in argv:
        argv = [*argv, "--preset", preset(tmp_path, specs[name])]
    code = main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_collect_of_a_folder_without_a_study_says_so(tmp_path, capsys):
    assert main(["study", "data-scaling", "--collect", str(tmp_path)]) != 0
    assert "holds no study (study.yaml is missing)" in capsys.readouterr().err


def test_the_shipped_presets_plan_and_their_points_validate():
    """Every shipped preset trains its supervised points to convergence under the budget (the
    images of `all` counted as 57,000 here: Fashion-MNIST need not be on the test machine),
    the full ones with two seeds or more."""
    for name in study.STUDIES:
        for which in study.PRESETS:
            plan = study.plan.make_plan(name, which, Path("runs/x"), count=lambda cfg: 57000)
            assert plan.points and all(p.config["report_best"] for p in plan.points)
            assert len({p.id for p in plan.points}) == len(plan.points)
            supervised = [p for p in plan.points if p.config["objective"] == "supervised"]
            assert all(p.config["patience"] for p in supervised)
            assert torch.tensor([p.config["steps"] for p in supervised]).min() >= 100
            if which == "full":
                assert len(plan.seeds()) >= 2
