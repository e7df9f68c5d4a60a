"""Optimiser, learning-rate schedule and weight averaging (paper Appendix B.1 and Table 2).

- Parameter groups: no weight decay on biases, norm weights, position embeddings and the class
  token (every tensor with fewer than two dimensions, plus `model.no_weight_decay()`).
- AdamW (pre-training: β 0.9/0.999, high decay) or SGD with momentum 0.9 (fine-tuning); or
  Muon (Jordan et al. 2024, `torch.optim.Muon`) on the transformer blocks' weight matrices with
  AdamW on everything else (`MuonAdamW`), one learning rate and schedule for both.
- Linear warmup, then cosine or linear decay to `min_lr`, stepped once per optimiser step.
- EMA / Polyak averaging through `torch.optim.swa_utils.AveragedModel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vitlab.errors import ConfigError
from vitlab.runtime.device import unwrap_model
from vitlab.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices/kernels, and everything exempt from weight decay."""
    model = unwrap_model(model)  # DDP and torch.compile hide no_weight_decay() and rename
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or name in skip or name.split(".")[-1] in skip
        (no_decay if exempt else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, fused: bool = True
) -> torch.optim.Optimizer:
    """AdamW, SGD or Muon with AdamW over `param_groups`, with fused kernels where the device
    has them (pass fused=False for sharded parameters, which take the foreach path)."""
    groups = param_groups(model, cfg.weight_decay)
    device = next(model.parameters()).device.type
    fused = fused and device in ("cpu", "cuda")
    kw = {"fused": True} if fused else {"foreach": True}
    if cfg.optimizer == "muon":
        matrices = hidden_matrices(model)
        if not matrices:
            raise ConfigError(
                f"optimizer=muon orthogonalises the weight matrices of transformer blocks, and "
                f"{type(unwrap_model(model)).__name__} has none: use optimizer=adamw"
            )
        adamw = torch.optim.AdamW(_without(groups, matrices), lr=cfg.lr, betas=cfg.betas, **kw)
        muon = torch.optim.Muon(
            [{"params": matrices, "weight_decay": cfg.weight_decay}],
            lr=cfg.lr,
            momentum=cfg.muon_momentum,
            nesterov=True,
            adjust_lr_fn="match_rms_adamw",
        )
        return MuonAdamW(muon, adamw)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **kw)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **kw)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The parameters Muon takes: the 2-D weights inside transformer blocks (attention's qkv and
    projection, the MLP's two layers; an MAE decoder's too). The patch embedding, position
    embeddings, tokens, norms, biases and heads stay with AdamW, as in Muon's own recipe."""
    return [
        p
        for name, p in unwrap_model(model).named_parameters()
        if p.requires_grad and p.ndim == 2 and ".blocks." in f".{name}"
    ]


def _without(groups: list[dict], taken: list[nn.Parameter]) -> list[dict]:
    ids = {id(p) for p in taken}
    return [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the hidden matrices and AdamW on the rest, as one optimiser: the schedule sets
    both's rates (their groups are this one's), clipping, checkpoints and resume see one.

    Muon's update is the Newton-Schulz orthogonalised Nesterov momentum of the gradient, scaled
    by 0.2 * sqrt(max(rows, cols)) (`adjust_lr_fn="match_rms_adamw"`, Liu et al. 2025) so that
    one learning rate and weight decay suit both halves."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([*muon.param_groups, *adamw.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ConfigError(
                "the checkpoint's optimiser state is not Muon with AdamW: resume with the "
                "optimizer the run was started with"
            )
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int, total: int) -> int:
    """Warmup length in optimiser steps: `warmup_steps`, else `warmup_epochs`, at most half the
    run."""
    n = cfg.warmup_steps or round(cfg.warmup_epochs * steps_per_epoch)
    return min(n, total // 2)


def lr_factor(step: int, warmup: int, total: int, schedule: str, floor: float) -> float:
    """Multiplier of the peak lr after `step` optimiser steps: linear warmup from ~0, then
    cosine or linear decay to `floor` (min_lr / lr) at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1.0 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t
    return floor + (1.0 - floor) * shape


@dataclass
class Cooldown:
    """The cool-down after a plateau (TrainConfig `cooldown`, with `patience`): from step
    `start` the learning rate falls linearly from the schedule's value there to its floor at
    step `end`. `start` is None until validation stalls; the run sets it (from its history, so
    a resumed run cools down where the uninterrupted one did)."""

    start: int | None = None
    end: int = 0

    def factor(self, step: int, schedule: Callable[[int], float], floor: float) -> float:
        """The multiplier of the peak lr after `step` steps: `schedule`'s before the start."""
        if self.start is None or step < self.start:
            return schedule(step)
        f0 = schedule(self.start)
        t = min(1.0, (step - self.start) / max(1, self.end - self.start))
        return floor + (f0 - floor) * (1.0 - t)


def build_scheduler(
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    steps_per_epoch: int,
    total: int,
    cooldown: Cooldown | None = None,
) -> LambdaLR:
    """Warmup then the schedule (`lr_factor`); with `cooldown`, its decay once it has started."""
    warm = warmup_steps(cfg, steps_per_epoch, total)
    floor = cfg.min_lr / cfg.lr

    def schedule(s: int) -> float:
        return lr_factor(s, warm, total, cfg.schedule, floor)

    if cooldown is None:
        return LambdaLR(opt, schedule)
    return LambdaLR(opt, lambda s: cooldown.factor(s, schedule, floor))


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """Polyak averaging of weights and buffers: ema = decay * ema + (1 - decay) * weights."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
