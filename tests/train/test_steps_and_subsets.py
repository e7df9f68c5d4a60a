"""The run-level keys studies are built from: epochs of a fixed number of steps, the report of
the best checkpoint, class and subset selection, and what report.json records."""

import json

import pytest
import torch

from vitlab import load_checkpoint
from vitlab.data.loader import KeyBatchSampler
from vitlab.errors import ConfigError
from vitlab.evaluate import evaluate_checkpoint
from vitlab.train.config import TrainConfig
from vitlab.train.run import fit, training_data

from .common import small_cfg

DIGITS = dict(model="vit_test", model_args={"patch_size": 4}, img_size=8, data="digits",
              batch_size=32, lr=3e-3)  # fmt: skip


def test_an_epoch_of_more_steps_than_one_pass_reshuffles_within_it():
    sampler = KeyBatchSampler(n=40, batch=16, seed=0, train=True, steps_per_epoch=6)
    sampler.set_epoch(0)
    batches = [idx for _, idx in sampler]
    assert len(batches) == 6 and all(len(b) == 16 for b in batches)
    seen = torch.tensor([i for b in batches for i in b])
    assert torch.bincount(seen, minlength=40).min() >= 2  # 96 draws, every image at least twice
    again = KeyBatchSampler(n=40, batch=16, seed=0, train=True, steps_per_epoch=6)
    again.set_epoch(0, skip=2)  # a run resumed two steps into the epoch
    assert [idx for _, idx in again] == batches[2:]
    sampler.set_epoch(1)
    assert [idx for _, idx in sampler] != batches


def test_epoch_steps_sets_the_epoch_whatever_the_data_size(tmp_path):
    cfg = TrainConfig(**DIGITS, train_images=40, steps=9, epoch_steps=3, val_split=0.1,
                      out=str(tmp_path / "run"))  # fmt: skip
    res = fit(cfg)
    assert [h["step"] for h in res.state.history] == [3, 6, 9]
    assert all("val_acc" in h for h in res.state.history)
    assert res.report["train_images"] == 40 and res.report["steps"] == 9


def test_report_best_evaluates_the_best_checkpoint_in_fp32_as_vitlab_eval_does(tmp_path):
    cfg = TrainConfig(**DIGITS, steps=8, epoch_steps=2, val_split=0.1, report_best=True,
                      precision="bf16", out=str(tmp_path / "run"))  # fmt: skip
    res = fit(cfg)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["weights"].endswith("best.safetensors")
    assert (
        report["best"]["epoch"] == max(res.state.history, key=lambda h: h["val_acc"])["epoch"]
    )  # the first of equal bests
    model = load_checkpoint(report["weights"])
    assert evaluate_checkpoint(model, "digits")["top1"] == report["top1"]
    assert report["params"] == model.num_params() and report["gflops"] > 0
    assert report["batch_size"] == 32 and 0 < report["train_minutes"] <= report["wall_minutes"]


def test_report_best_without_validation_reports_the_last_weights(tmp_path, caplog):
    res = fit(small_cfg(tmp_path, epochs=1, report_best=True))
    assert res.report["weights"].endswith("last.safetensors")
    assert "no epoch was validated" in caplog.text


def test_classes_and_subsets_choose_the_training_images(tmp_path):
    cfg = TrainConfig(**DIGITS, classes=["3", "8"], train_per_class=20, val_split=0.1)
    data = training_data(cfg)
    assert data.class_names == ("3", "8")
    assert torch.bincount(data.train.targets).tolist() == [20, 20]
    assert set(data.val.targets.tolist()) == set(data.test.targets.tolist()) == {0, 1}
    full = training_data(TrainConfig(**DIGITS, classes=["3", "8"], val_split=0.1))
    assert len(data.val) == len(full.val)  # validation is held out before the subset is drawn


def test_subset_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="set one of them"):
        TrainConfig(train_images=10, train_per_class=2)
    with pytest.raises(ConfigError, match="classes must name at least 2"):
        TrainConfig(classes=["3"])
    with pytest.raises(ConfigError, match="epoch_steps must be >= 1"):
        TrainConfig(epoch_steps=0)


def test_eval_of_a_model_trained_on_some_classes_evaluates_on_those(tmp_path):
    cfg = TrainConfig(**DIGITS, classes=[7, 1], steps=2, out=str(tmp_path / "run"))
    res = fit(cfg)
    model = load_checkpoint(tmp_path / "run" / "last.safetensors")
    got = evaluate_checkpoint(model, "digits")
    assert got["n"] == res.report["n"] == len(training_data(cfg).test)
    assert got["top1"] == res.report["top1"] and list(got["per_class"]) == ["7", "1"]
