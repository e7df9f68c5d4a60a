"""Training state and checkpoints: everything `--resume` needs, written atomically.

A run directory holds, after every epoch (and every `ckpt_every` steps):

- `last.safetensors` (and `best.safetensors`): the model a user loads with
  `vitlab.load_checkpoint` (the EMA weights when EMA is on), self-describing;
- `last.state.pt`: model, EMA, optimiser, schedule, grad scaler, step and history in one file,
  loaded with `torch.load(weights_only=True)` (tensors and plain containers only).

Randomness needs no saved generator: data order comes from (seed, epoch) through
`DistributedSampler`, and each step reseeds augmentation and dropout from (seed, step, rank), so a
resumed run replays exactly the batches and masks an uninterrupted one would have seen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from vitlab.errors import CheckpointError, ConfigError
from vitlab.files import atomic_path
from vitlab.runtime.device import unwrap_model
from vitlab.train.config import TrainConfig
from vitlab.train.optim import Cooldown
from vitlab.weights.checkpoint import save_checkpoint

log = logging.getLogger("vitlab")

STATE_FILE = "last.state.pt"
# What a run writes into its directory, by role (an `--overwrite` start removes these files,
# and nothing else).
RUN_FILES = {
    "state": STATE_FILE, "last": "last.safetensors", "best": "best.safetensors",
    "config": "config.yaml", "metrics": "metrics.jsonl", "summary": "summary.csv",
    "curves": "curves.png", "report": "report.json", "confusion": "confusion.png",
}  # fmt: skip
# Fields a resumed run may change without changing what it computes.
RESUMABLE_CHANGES = {"out", "workers", "log_every", "ckpt_every", "threads", "data_root"}
RESUMABLE_CHANGES |= {"download", "eval_every"}


@dataclass
class TrainState:
    """The objects a training step mutates, plus the counters that place it in the run."""

    model: nn.Module  # possibly wrapped in DDP/FSDP or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None
    ema: AveragedModel | None = None
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)  # {"val_acc": ..., "epoch": ...}
    skipped: int = 0  # unreadable images skipped so far
    train_time: float = 0.0  # seconds spent in training steps
    wall_time: float = 0.0  # seconds spent in whole epochs (steps, validation, checkpoints)
    images: int = 0  # training images processed
    # the cool-down after a plateau (`cooldown`), which the learning-rate schedule reads
    cooldown: Cooldown | None = None

    @property
    def eval_model(self) -> nn.Module:
        """The weights to evaluate and publish: the EMA average when there is one."""
        return self.ema.module if self.ema is not None else unwrap_model(self.model)


def _sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _model_sd(state: TrainState) -> tuple[dict, dict]:
    """Full (unsharded) model and optimiser state dicts; a collective under FSDP."""
    if _sharded(state.model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(state.model, state.optimizer, options=opts)
    return unwrap_model(state.model).state_dict(), state.optimizer.state_dict()


def state_dict(state: TrainState, cfg: TrainConfig) -> dict[str, Any]:
    model_sd, optim_sd = _model_sd(state)
    return {
        "model": model_sd,
        "optimizer": optim_sd,
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "step": state.step,
        "history": state.history,
        "best": state.best,
        "skipped": state.skipped,
        "train_time": state.train_time,
        "wall_time": state.wall_time,
        "images": state.images,
        "config": cfg.to_dict(),
    }


def save_state(
    state: TrainState, cfg: TrainConfig, run_dir: Path, main: bool, best: bool = False
) -> None:
    """Write `last.state.pt`, `last.safetensors` and, when `best`, `best.safetensors` (rank 0
    writes; every rank must call, since gathering sharded weights is a collective)."""
    sd = state_dict(state, cfg)
    if not main:
        return
    with atomic_path(run_dir / STATE_FILE) as tmp:
        torch.save(sd, tmp)
    publish(state, run_dir / RUN_FILES["last"], sd["model"])
    if best:
        publish(state, run_dir / RUN_FILES["best"], sd["model"])


def publish(state: TrainState, path: Path, model_sd: dict | None = None) -> None:
    """Save the evaluation weights as a self-describing vitlab checkpoint."""
    from vitlab.train.pretrain import save_pretrained_weights
    from vitlab.train.selfsup import is_pretrainer

    model = state.eval_model
    if _sharded(state.model) and state.ema is None and model_sd is not None:
        model = _gathered(unwrap_model(state.model), model_sd)
    if is_pretrainer(model):
        save_pretrained_weights(model, path)
    else:
        save_checkpoint(model, path)


def _gathered(sharded: nn.Module, model_sd: dict) -> nn.Module:
    """A plain copy of a sharded model holding the full `model_sd` (the sharded one's
    structure, built on the CPU)."""
    from vitlab.models.registry import build_model
    from vitlab.train.selfsup import is_pretrainer

    if is_pretrainer(sharded):  # the objective's module, built again around a plain encoder
        model = type(sharded)(build_model(sharded.encoder.cfg), **sharded.settings)
    else:
        model = build_model(sharded.cfg)
    model.load_state_dict(model_sd)
    return model


def find_resume(resume: str | None, run_dir: Path) -> Path | None:
    """`auto`: the run directory's state if there is one; a path: that state file (or the
    run directory holding it); None: start fresh."""
    if resume is None:
        return None
    if resume == "auto":
        path = run_dir / STATE_FILE
        return path if path.is_file() else None
    path = Path(resume)
    path = path / STATE_FILE if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no {STATE_FILE} there; point at a run directory")
    return path


def refuse_to_replace(run_dir: Path, resume_path: Path | None) -> None:
    """Starting a run in a directory that holds another run's state would replace its
    checkpoints from the first epoch on: a finished run's weights would be lost."""
    held = run_dir / STATE_FILE
    if not held.is_file() or (resume_path is not None and resume_path.samefile(held)):
        return
    kind = "finished" if (run_dir / "report.json").is_file() else "unfinished"
    raise ConfigError(
        f"{run_dir} already holds a {kind} run ({held.name}); continue it with --resume, "
        "start over in it with --overwrite (its files are removed first), or choose another "
        "--out (Python: fit(cfg, resume='auto') or fit(cfg, overwrite=True))"
    )


def clear_run(run_dir: Path) -> None:
    """Remove an earlier run's files, so that none of them (a stale `best.safetensors` or
    `report.json`) can pass for the new run's."""
    for name in RUN_FILES.values():
        (run_dir / name).unlink(missing_ok=True)


def read_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file must say so, whatever torch raises
        raise CheckpointError(f"{path} is not a readable training state ({e})") from None


def check_same_run(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """A resumed run must compute the same thing: only bookkeeping fields may change."""
    now = cfg.to_dict()
    changed = sorted(
        k for k in now if k not in RESUMABLE_CHANGES and saved.get(k, now[k]) != now[k]
    )
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume {path}: the config differs ({diffs}); resume with the run's own "
            "config (its config.yaml) or start a new run with another --out"
        )


def restore(state: TrainState, sd: dict[str, Any]) -> None:
    """Load a state dict written by `state_dict` into live objects."""
    if _sharded(state.model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        opts = StateDictOptions(full_state_dict=True)
        set_state_dict(
            state.model,
            state.optimizer,
            model_state_dict=sd["model"],
            optim_state_dict=sd["optimizer"],
            options=opts,
        )
    else:
        unwrap_model(state.model).load_state_dict(sd["model"])
        state.optimizer.load_state_dict(sd["optimizer"])
    state.scheduler.load_state_dict(sd["scheduler"])
    if state.scaler is not None and sd.get("scaler"):
        state.scaler.load_state_dict(sd["scaler"])
    if state.ema is not None and sd.get("ema"):
        state.ema.load_state_dict(sd["ema"])
    for k in ("step", "history", "best", "skipped", "train_time", "images"):
        setattr(state, k, sd[k])
    state.wall_time = sd.get("wall_time", state.train_time)  # states written before it existed
