import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from vitlab.data.datasets import load_data
from vitlab.evaluate import evaluate
from vitlab.train import loop
from vitlab.train.config import TrainConfig
from vitlab.train.distributed import DistInfo, cleanup, init_distributed, wrap_model
from vitlab.train.loop import StepContext, TrainingDiverged, train_step
from vitlab.train.optim import build_optimizer, build_scheduler
from vitlab.train.run import _loader, augmentations, fit, model_for_data
from vitlab.train.state import TrainState

SMALL = {"patch_size": 4}  # vit_test at 16 px: 16 patches, D 32, 2 blocks


def _cfg(tmp_path, **kw):
    base = dict(model="vit_test", model_args=SMALL, img_size=16, data="synthetic", epochs=2,
                batch_size=32, lr=3e-3, warmup_steps=2, out=str(tmp_path / "run"))  # fmt: skip
    return TrainConfig(**{**base, **kw})


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
    cfg = _cfg(tmp_path, data=data, img_size=size, model_args=patch, batch_size=64, lr=5e-3)
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
    result = fit(_cfg(tmp_path, val_split=val_split, epochs=2))
    split = "val" if val_split else "test"
    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert all(f"{split}_acc" in h for h in history)
    assert not any(f"{other}_acc" in h for h in history for other in {"val", "test"} - {split})
    header = (result.run_dir / "summary.csv").read_text().splitlines()[0].split(",")
    assert f"{split}_acc" in header and f"{split}_loss" in header
    assert (result.run_dir / "best.safetensors").exists() == bool(val_split)
    assert bool(result.report["best"]) == bool(val_split)


def test_progress_bar_writes_few_lines_into_a_log_file(tmp_path, capsys):
    """With stderr a file (nohup, Slurm), the bar refreshes every 30 s at most, instead of
    writing a line per logged step."""
    fit(_cfg(tmp_path, steps=40, batch_size=8, log_every=1, epochs=1))
    err = capsys.readouterr().err
    assert err.count("batch/s") + err.count("s/batch") < 10  # 40 logged steps


def _state(cfg, model):
    opt = build_optimizer(model, cfg, fused=False)
    return TrainState(model, opt, build_scheduler(opt, cfg, 10, 10))


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    torch.manual_seed(0)
    data = load_data("synthetic")
    x, y = data.train.images[:32], data.train.labels[:32]
    weights = []
    for accum in (1, 4):
        # clip_grad off: clipping to norm 1 would hide micro-batch gradients summed unscaled
        cfg = _cfg(tmp_path, accum_steps=accum, optimizer="sgd", lr=0.1, clip_grad=None)
        model = model_for_data(cfg, data)
        state = _state(cfg, model)
        c = model.cfg
        train_step(state, x, y, StepContext(cfg, DistInfo(), c.mean, c.std, 4))
        weights.append(model.state_dict())
    for k, v in weights[0].items():
        torch.testing.assert_close(weights[1][k], v, atol=1e-6, rtol=1e-5)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, epochs=3)
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
def _train_cmd(out, *extra):
    return [sys.executable, "-m", "vitlab", "-q", "train", "--model", "vit_test", "--data",
            "synthetic", "--img-size", "16", "--epochs", "8", "--batch-size", "8", "--out",
            str(out), "--set", "model_args.patch_size=4", "--set", "model_args.drop_path_rate=0.1",
            "--set", "deterministic=true", "--set", "threads=1", "--set", "pad_crop=2",
            "--set", "hflip=0.5", "--set", "mixup=0.4", "--set", "ema_decay=0.9",
            "--set", "ckpt_every=7", "--set", "warmup_steps=5", "--set", "val_split=0.25",
            *extra]  # fmt: skip


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    ref = subprocess.run(_train_cmd(tmp_path / "ref"), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(out), env=_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "last.state.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "last.state.pt", weights_only=True)["step"]
    assert 0 < killed_at < 8 * 24  # 192 training images after the validation split
    res = subprocess.run(_train_cmd(out, "--resume"), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "ref" / name), load_file(out / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa = torch.load(tmp_path / "ref" / "last.state.pt", weights_only=True)
    sb = torch.load(out / "last.state.pt", weights_only=True)
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], sb["optimizer"]["state"][k]["exp_avg_sq"])
    assert sa["step"] == sb["step"] and sa["ema"].keys() == sb["ema"].keys()
    assert all(torch.equal(v, sb["ema"][k]) for k, v in sa["ema"].items())


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    fit(cfg)
    from vitlab.errors import ConfigError

    with pytest.raises(ConfigError, match="lr: 0.003 -> 0.01"):
        fit(_cfg(tmp_path, epochs=1, lr=0.01), resume="auto")


# --------------------------------------------------------------------------------- DDP
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    x, y, cfg, model = _ddp_setup(tmp)
    state = _state(cfg, wrap_model(model, info, "ddp"))
    half = len(y) // world
    rows = slice(rank * half, (rank + 1) * half)
    c = model.cfg
    loss, _ = train_step(state, x[rows], y[rows], StepContext(cfg, info, c.mean, c.std, 4))
    if rank == 0:
        torch.save({"weights": model.state_dict(), "loss": loss}, f"{tmp}/ddp.pt")
    cleanup()


def _ddp_setup(tmp):
    data = load_data("synthetic")
    # SGD: the update is linear in the gradient, so the comparison is not blurred by Adam's
    # division by tiny second moments
    cfg = TrainConfig(model="vit_test", model_args=SMALL, img_size=16, lr=0.1, out=str(tmp),
                      optimizer="sgd", weight_decay=0.1, label_smoothing=0.1)  # fmt: skip
    return data.train.images[:16], data.train.labels[:16], cfg, model_for_data(cfg, data)


@pytest.mark.slow
def test_two_process_gloo_ddp_step_equals_the_single_process_step(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    x, y, cfg, model = _ddp_setup(tmp_path)
    state = _state(cfg, model)
    c = model.cfg
    loss, _ = train_step(state, x, y, StepContext(cfg, DistInfo(), c.mean, c.std, 4))
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert math.isclose(got["loss"], loss, rel_tol=1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(got["weights"][k], v, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_train_and_write_once(tmp_path, strategy):
    out = tmp_path / strategy
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "vitlab", "-q", "train", "--model", "vit_test", "--data",
                      "synthetic", "--img-size", "16", "--batch-size", "32", "--epochs", "1",
                      "--strategy", strategy, "--out", str(out), "--set",
                      "model_args.patch_size=4"]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("test top-1") == 1  # printed by rank 0 only
    import vitlab

    model = vitlab.load_checkpoint(out / "last.safetensors")  # gathered, unsharded weights
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    assert state["step"] == 8  # 256 images / global batch 32


@pytest.mark.slow
def test_compiled_training_matches_eager_and_writes_plain_checkpoints(tmp_path):
    """The demo preset compiles its model: same losses as eager (up to kernel rounding), and the
    checkpoint keys are the model's own (no `_orig_mod.` prefix), so eval/predict read them."""
    runs = {}
    for compiled in (False, True):
        cfg = _cfg(tmp_path / str(compiled), epochs=1, steps=4, compile=compiled, val_split=0.0)
        runs[compiled] = fit(cfg)
    eager, comp = runs[False].report["loss"], runs[True].report["loss"]
    assert math.isclose(eager, comp, rel_tol=1e-3)
    keys = load_file(runs[True].run_dir / "last.safetensors").keys()
    assert keys == load_file(runs[False].run_dir / "last.safetensors").keys()


def test_without_a_cxx_compiler_compile_is_skipped_with_a_warning(monkeypatch, caplog):
    from vitlab.train import run

    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    assert run.can_compile(torch.device("cpu")) is False
    assert "no C++ compiler" in caplog.text and "compile=false" in caplog.text
    assert run.can_compile(torch.device("cuda")) is True
