"""A whole run (vitlab.train.run.fit): it learns, writes its files, picks the best checkpoint
on validation only, resolves `precision: auto` before it starts, and compiles."""

import json
import math

import pytest
from safetensors.torch import load_file

from tests.train.common import small_cfg
from vitlab.data.datasets import load_data
from vitlab.evaluate import evaluate
from vitlab.train.config import build_config
from vitlab.train.distributed import DistInfo
from vitlab.train.loop import StepContext
from vitlab.train.run import _loader, augmentations, fit, model_for_data


def _test_loss(cfg, model):
    data = load_data(cfg.data)
    _, aug = augmentations(cfg, model)
    c = model.cfg
    ctx = StepContext(cfg, DistInfo(), c.mean, c.std, data.num_classes)
    return evaluate(model, _loader(data.test, aug, cfg, DistInfo())[0], ctx.eval_context()).loss


@pytest.mark.parametrize("data", ["synthetic", "digits"])
def test_a_few_steps_lower_the_loss(tmp_path, data):
    size = {"synthetic": 16, "digits": 8}[data]
    patch = {"patch_size": 2 if size == 8 else 4}
    cfg = small_cfg(tmp_path, data=data, img_size=size, model_args=patch, batch_size=64, lr=5e-3)
    before = _test_loss(cfg, model_for_data(cfg, load_data(data)))
    result = fit(cfg)
    assert result.report["loss"] < 0.8 * before
    assert result.report["top1"] > 1.5 / len(result.report["per_class"])  # well above chance
    files = {"config.yaml", "metrics.jsonl", "summary.csv", "curves.png", "last.safetensors"}
    files |= {"last.state.pt", "report.json", "confusion.png"}
    assert files <= {p.name for p in result.run_dir.iterdir()}


@pytest.mark.parametrize("val_split", [0.25, 0.0])
def test_the_best_checkpoint_is_chosen_on_validation_never_on_test(tmp_path, val_split):
    """Without a validation split the test split is evaluated each epoch to be watched, under
    test_* keys, and no `best` checkpoint is chosen by it."""
    result = fit(small_cfg(tmp_path, val_split=val_split, epochs=2))
    split = "val" if val_split else "test"
    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert all(f"{split}_acc" in h for h in history)
    assert not any(f"{other}_acc" in h for h in history for other in {"val", "test"} - {split})
    header = (result.run_dir / "summary.csv").read_text().splitlines()[0].split(",")
    assert f"{split}_acc" in header and f"{split}_loss" in header
    assert (result.run_dir / "best.safetensors").exists() == bool(val_split)
    assert bool(result.report["best"]) == bool(val_split)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_writes_plain_checkpoints(tmp_path):
    """The demo preset compiles its model: same losses as eager (up to kernel rounding), and the
    checkpoint keys are the model's own (no `_orig_mod.` prefix), so eval/predict read them."""
    runs = {}
    for compiled in (False, True):
        cfg = small_cfg(
            tmp_path / str(compiled), epochs=1, steps=4, compile=compiled, val_split=0.0
        )
        runs[compiled] = fit(cfg)
    eager, comp = runs[False].report["loss"], runs[True].report["loss"]
    assert math.isclose(eager, comp, rel_tol=1e-3)
    keys = load_file(runs[True].run_dir / "last.safetensors").keys()
    assert keys == load_file(runs[False].run_dir / "last.safetensors").keys()


def test_precision_auto_is_resolved_before_the_run_starts(tmp_path, monkeypatch):
    """The run's saved config records the precision it actually trained in, and a resume
    keeps it without measuring again."""
    from vitlab.runtime.precision import MatmulProbe

    cfg = build_config(None, {"model": "vit_test", "data": "synthetic", "steps": 1,
                              "batch_size": 4, "img_size": 32, "precision": "auto",
                              "out": str(tmp_path / "run")})  # fmt: skip
    fit(cfg)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "precision: auto" not in saved
    assert "precision: fp32" in saved or "precision: bf16" in saved

    def no_timing(*a, **k):
        raise AssertionError("a resumed run must not measure again")

    monkeypatch.setattr(MatmulProbe, "gflops", no_timing)
    fit(cfg, resume="auto")
    assert (tmp_path / "run" / "config.yaml").read_text() == saved


def test_a_run_with_test_time_flips_reports_what_eval_flip_gives(tmp_path):
    import vitlab
    from vitlab.evaluate import evaluate_checkpoint

    cfg = small_cfg(tmp_path, steps=4, eval_flip=True, val_split=0.25)
    run = fit(cfg)
    report = json.loads((run.run_dir / "report.json").read_text())
    model = vitlab.load_checkpoint(run.run_dir / "last.safetensors")
    assert report["flip"] is True
    assert report["top1"] == evaluate_checkpoint(model, "synthetic", flip=True)["top1"]
    assert report["loss"] != pytest.approx(evaluate_checkpoint(model, "synthetic")["loss"])
