"""Early stopping (`patience`): a run stops after that many validation passes without a better
accuracy, says why it stopped (patience, or the step cap reached first), and a resumed run
stops where the uninterrupted one did."""

import json

import pytest

from tests.train.common import small_cfg
from vitlab.errors import ConfigError
from vitlab.train.run import fit

# A learning rate too small to move validation accuracy: the first pass is the best one.
FROZEN = {"lr": 1e-12, "warmup_steps": 0, "val_split": 0.25, "epoch_steps": 1}


def test_a_run_that_stops_improving_stops_after_patience_passes(tmp_path):
    result = fit(small_cfg(tmp_path, epochs=10, patience=2, **FROZEN))
    r = result.report
    assert r["stopped"] == "patience"
    assert r["steps"] == 3 and r["max_steps"] == 10  # best at pass 1, then 2 without gain
    assert r["best"]["epoch"] == 1
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert len(rows) == 3


def test_a_run_that_reaches_its_cap_says_so(tmp_path):
    r = fit(small_cfg(tmp_path, epochs=3, patience=5, **FROZEN)).report
    assert r["stopped"] == "cap" and r["steps"] == r["max_steps"] == 3


def test_without_patience_the_run_trains_its_budget(tmp_path):
    r = fit(small_cfg(tmp_path, epochs=2, **FROZEN)).report
    assert r["stopped"] == "budget" and r["steps"] == 2


def test_a_resumed_run_that_had_stopped_does_not_train_on(tmp_path):
    """Killed after its last checkpoint but before the report: resuming writes the report and
    takes no further step."""
    cfg = small_cfg(tmp_path, epochs=10, patience=2, **FROZEN)
    first = fit(cfg)
    (first.run_dir / "report.json").unlink()
    again = fit(cfg, resume="auto")
    assert again.state.step == first.state.step == 3
    assert again.report["stopped"] == "patience"


def test_patience_without_a_validation_split_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no validation split: set val_split"):
        fit(small_cfg(tmp_path, patience=2))


def test_patience_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="patience must be >= 1"):
        small_cfg(tmp_path, patience=0)


def test_a_cooldown_anneals_the_rate_after_the_plateau_then_stops(tmp_path):
    """Warmup-stable-decay: once validation stalls (patience 2 after the best first pass), the
    rate falls linearly to min_lr over `cooldown` x the steps so far (at least a pass), and the
    run stops there; a resumed run cools down where the uninterrupted one did."""
    frozen = {**FROZEN, "lr": 1e-6, "epoch_steps": 4, "schedule": "constant"}
    cfg = small_cfg(tmp_path, epochs=40, patience=2, cooldown=0.5, **frozen)
    r = fit(cfg)
    rows = [json.loads(line) for line in (r.run_dir / "metrics.jsonl").open()]
    assert r.report["stopped"] == "patience" and r.report["cooldown_from"] == 12
    assert r.report["steps"] == 18  # stalled at step 12 (best at 4): 12 + max(4, 0.5 x 12)
    lrs = [row["lr"] for row in rows]
    assert lrs[:3] == [1e-6] * 3  # constant until the stall
    assert lrs[3] == pytest.approx(1e-6 * (1 - 4 / 6)) and lrs[4] == pytest.approx(0.0)


def test_a_run_killed_in_its_cooldown_resumes_it_with_the_same_rates(tmp_path, monkeypatch):
    from vitlab.train import run as run_module

    frozen = {**FROZEN, "lr": 1e-6, "epoch_steps": 4, "schedule": "constant"}
    kw = dict(epochs=40, patience=2, cooldown=0.5, **frozen)
    whole = fit(small_cfg(tmp_path / "a", **kw))
    end_of_epoch = run_module._end_of_epoch

    def killed_at_step_16(cfg, state, *args):  # in the cool-down (12 -> 18)
        end_of_epoch(cfg, state, *args)
        if state.step == 16:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "_end_of_epoch", killed_at_step_16)
    with pytest.raises(KeyboardInterrupt):
        fit(small_cfg(tmp_path / "b", **kw))
    monkeypatch.setattr(run_module, "_end_of_epoch", end_of_epoch)
    resumed = fit(small_cfg(tmp_path / "b", **kw), resume="auto")
    assert resumed.state.step == 18 and resumed.report["cooldown_from"] == 12
    rows = [[json.loads(line)["lr"] for line in (r.run_dir / "metrics.jsonl").open()]
            for r in (whole, resumed)]  # fmt: skip
    assert rows[0] == pytest.approx(rows[1])


def test_a_cooldown_needs_patience(tmp_path):
    with pytest.raises(ConfigError, match="cooldown decays the learning rate once validation"):
        small_cfg(tmp_path, cooldown=0.2)
