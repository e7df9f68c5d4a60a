"""Optimiser, learning-rate schedule and weight averaging (paper Appendix B.1 and Table 2).

- Parameter groups: no weight decay on biases, norm weights, position embeddings and the class
  token (every tensor with fewer than two dimensions, plus `model.no_weight_decay()`).
- AdamW (pre-training: β 0.9/0.999, high decay) or SGD with momentum 0.9 (fine-tuning).
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
    """AdamW or SGD over `param_groups`, with fused kernels where the device has them (pass
    fused=False for sharded parameters, which take the foreach path)."""
    groups = param_groups(model, cfg.weight_decay)
    device = next(model.parameters()).device.type
    fused = fused and device in ("cpu", "cuda")
    kw = {"fused": True} if fused else {"foreach": True}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **kw)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **kw)


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
