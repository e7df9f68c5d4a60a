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
