"""Multi-process training (vitlab.train.distributed): a two-process gloo DDP step equals the
single-process step on the whole batch; torchrun runs DDP and FSDP and rank 0 writes once."""

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import perturb_
from tests.train.common import SMALL, state_for
from vitlab.data.datasets import load_data
from vitlab.train.config import TrainConfig
from vitlab.train.distill import load_teacher
from vitlab.train.distributed import DistInfo, cleanup, init_distributed, wrap_model
from vitlab.train.loop import StepContext, train_step
from vitlab.train.run import model_for_data


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, tmp, distill):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    x, y, cfg, model, ctx = _ddp_setup(tmp, distill, info)
    state = state_for(cfg, wrap_model(model, info, "ddp"))
    half = len(y) // world
    rows = slice(rank * half, (rank + 1) * half)
    loss, _ = train_step(state, x[rows], y[rows], ctx)
    if rank == 0:
        torch.save({"weights": model.state_dict(), "loss": loss}, f"{tmp}/ddp.pt")
    cleanup()


def _ddp_setup(tmp, distill=None, info=None):
    """A batch, its run config, the model and the step context; with `distill` ("hard" or
    "soft"), a student with a distillation token and the teacher saved in `tmp`."""
    data = load_data("synthetic")
    info = info or DistInfo()
    # SGD: the update is linear in the gradient, so the comparison is not blurred by Adam's
    # division by tiny second moments
    args = {**SMALL, "distill_token": True} if distill else SMALL
    kw = dict(teacher=f"{tmp}/teacher.safetensors", distill=distill) if distill else {}
    cfg = TrainConfig(model="vit_test", model_args=args, img_size=16, lr=0.1, out=str(tmp),
                      optimizer="sgd", weight_decay=0.1, label_smoothing=0.1, **kw)  # fmt: skip
    torch.manual_seed(0)
    model = model_for_data(cfg, data)
    teacher = None
    if distill:
        teacher = load_teacher(cfg.teacher, 4, None, model.cfg, info.device)
        model.set_distilled_training(True)
    ctx = StepContext(cfg, info, model.cfg.mean, model.cfg.std, 4, teacher)
    return data.train.images[:16], data.train.labels[:16], cfg, model, ctx


def _save_teacher(tmp):
    import vitlab

    torch.manual_seed(1)
    teacher = vitlab.create_model("vit_test", img_size=16, patch_size=4, num_classes=4)
    vitlab.save_checkpoint(perturb_(teacher, 0.3), tmp / "teacher.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("distill", [None, "hard", "soft"])
def test_two_process_gloo_ddp_step_equals_the_single_process_step(tmp_path, distill):
    """Also with a teacher (DeiT): each rank distils its half of the batch, and the averaged
    gradients make the step of the whole batch."""
    if distill:
        _save_teacher(tmp_path)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), distill), nprocs=2)
    x, y, cfg, model, ctx = _ddp_setup(tmp_path, distill)
    state = state_for(cfg, model)
    loss, _ = train_step(state, x, y, ctx)
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


@pytest.mark.slow
def test_torchrun_distils_and_reports_the_teachers_own_accuracy_once(tmp_path):
    """A distilled DDP run: every rank runs the teacher on its shard, and the report's teacher
    figures (evaluated across the ranks) equal a single-process `vitlab eval` of the teacher."""
    _save_teacher(tmp_path)
    teacher, out = tmp_path / "teacher.safetensors", tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "vitlab", "-q", "train", "--model", "vit_test", "--data",
           "synthetic", "--img-size", "16", "--batch-size", "32", "--epochs", "1", "--out",
           str(out), "--set", "model_args.patch_size=4", "--set", "model_args.distill_token=true",
           "--teacher", str(teacher), "--distill", "hard"]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("test top-1") == 1  # printed by rank 0 only
    report = json.loads((out / "report.json").read_text())
    ev = tmp_path / "eval"
    cmd = [sys.executable, "-m", "vitlab", "-q", "eval", "--checkpoint", str(teacher), "--data",
           "synthetic", "--out", str(ev)]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    alone = json.loads((ev / "report.json").read_text())
    assert report["teacher"]["top1"] == alone["top1"] and report["teacher"]["distill"] == "hard"
    assert torch.load(out / "last.state.pt", weights_only=True)["step"] == 8
