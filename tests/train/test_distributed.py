"""Multi-process training (vitlab.train.distributed): a two-process gloo DDP step equals the
single-process step on the whole batch; torchrun runs DDP and FSDP and rank 0 writes once."""

import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.train.common import SMALL, state_for
from vitlab.data.datasets import load_data
from vitlab.train.config import TrainConfig
from vitlab.train.distributed import DistInfo, cleanup, init_distributed, wrap_model
from vitlab.train.loop import StepContext, train_step
from vitlab.train.run import model_for_data


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


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
    state = state_for(cfg, wrap_model(model, info, "ddp"))
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
    state = state_for(cfg, model)
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
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_pretraining_writes_the_encoder_and_its_decoder_once(tmp_path, strategy):
    out = tmp_path / strategy
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "vitlab", "-q", "pretrain", "--objective", "mae", "--model",
           "vit_test", "--data", "synthetic", "--img-size", "16", "--batch-size", "32",
           "--epochs", "1", "--strategy", strategy, "--out", str(out), "--set",
           "model_args.patch_size=4", "--set", "val_split=0.25"]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("pre-trained (mae)") == 1  # printed by rank 0 only
    assert [p.name for p in (out / "reconstructions").iterdir()] == ["epoch_001.png"]
    from safetensors.torch import load_file

    saved = load_file(out / "last.safetensors")  # gathered, unsharded
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["step"] == 6  # 192 images / global batch 32
    for k, v in saved.items():
        key = k if k.startswith("mae.") else f"encoder.{k}"
        assert torch.equal(v, state["model"][key]), k
