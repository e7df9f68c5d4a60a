import pytest
import torch
from safetensors.torch import load_file

from tests.train.common import small_cfg, state_for
from vitlab.data.datasets import load_data
from vitlab.train import loop
from vitlab.train.distributed import DistInfo
from vitlab.train.loop import StepContext, TrainingDiverged, train_step
from vitlab.train.run import fit, model_for_data


def test_progress_bar_writes_few_lines_into_a_log_file(tmp_path, capsys):
    """With stderr a file (nohup, Slurm), the bar refreshes every 30 s at most, instead of
    writing a line per logged step."""
    fit(small_cfg(tmp_path, steps=40, batch_size=8, log_every=1, epochs=1))
    err = capsys.readouterr().err
    assert err.count("batch/s") + err.count("s/batch") < 10  # 40 logged steps


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    torch.manual_seed(0)
    data = load_data("synthetic")
    x, y = data.train.images[:32], data.train.labels[:32]
    weights = []
    for accum in (1, 4):
        # clip_grad off: clipping to norm 1 would hide micro-batch gradients summed unscaled
        cfg = small_cfg(tmp_path, accum_steps=accum, optimizer="sgd", lr=0.1, clip_grad=None)
        model = model_for_data(cfg, data)
        state = state_for(cfg, model)
        c = model.cfg
        train_step(state, x, y, StepContext(cfg, DistInfo(), c.mean, c.std, 4))
        weights.append(model.state_dict())
    for k, v in weights[0].items():
        torch.testing.assert_close(weights[1][k], v, atol=1e-6, rtol=1e-5)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, epochs=3)
    calls = {"n": 0}
    real = loop.F.cross_entropy

    def poisoned(*a, **k):
        out = real(*a, **k)
        if not out.requires_grad:  # a validation pass
            return out
        calls["n"] += 1
        return out * float("nan") if calls["n"] > 12 else out  # epoch 2 of 8-step epochs

    monkeypatch.setattr(loop.F, "cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged) as e:
        fit(cfg)
    assert "loss became nan at step 12" in str(e.value) and "--set lr=" in str(e.value)
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["step"] == 8  # the end of epoch 1, untouched by the NaN
    weights = load_file(tmp_path / "run" / "last.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


# ------------------------------------------------------------------------ SIGKILL and resume


# --------------------------------------------------------------------------------- DDP
