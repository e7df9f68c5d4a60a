"""Checkpoints and resume (vitlab.train.state): a run killed with SIGKILL and resumed equals an
uninterrupted one, bit for bit; a resume with a changed config is refused."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.train.common import small_cfg
from vitlab.train.run import fit


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
    cfg = small_cfg(tmp_path, epochs=1)
    fit(cfg)
    from vitlab.errors import ConfigError

    with pytest.raises(ConfigError, match="lr: 0.003 -> 0.01"):
        fit(small_cfg(tmp_path, epochs=1, lr=0.01), resume="auto")
