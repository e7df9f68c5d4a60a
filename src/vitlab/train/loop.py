"""The training loop: `train_step` and `train_one_epoch` (evaluation passes: `vitlab.evaluate`).

One optimiser step takes the process's share of the global batch, splits it into
`accum_steps` micro-batches (gradients synchronised across processes on the last one only),
checks that the loss is finite on every process before touching the weights, clips the global
gradient norm, steps the optimiser, the per-step schedule and the EMA.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitlab.data.sets import mix_seed
from vitlab.data.transforms import mix_transform, normalize
from vitlab.errors import VitlabError
from vitlab.evaluate import EvalContext
from vitlab.progress import progress_bar
from vitlab.runtime.device import unwrap_model
from vitlab.runtime.precision import autocast
from vitlab.train.config import TrainConfig
from vitlab.train.distill import Teacher, distillation_loss, student_heads
from vitlab.train.distributed import DistInfo, all_reduce_sum
from vitlab.train.state import TrainState


class TrainingDiverged(VitlabError):
    """The loss became NaN or infinite."""


# -------------------------------------------------------------------------------- stepping
@dataclass
class StepContext:
    """What a step needs besides the state: device, normalisation, loss, precision."""

    cfg: TrainConfig
    info: DistInfo
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    teacher: Teacher | None = None  # distillation (`vitlab.train.distill`)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.info.device, self.cfg.precision)

    def eval_context(self) -> EvalContext:
        """The same device, normalisation and precision for an evaluation pass (with the run's
        test-time flips), summed over every process, with a progress bar on rank 0."""
        return EvalContext(
            self.info.device,
            self.mean,
            self.std,
            self.num_classes,
            precision=self.cfg.precision,
            reduce=all_reduce_sum,
            progress=self.info.main,
            flip=self.cfg.eval_flip,
        )


def train_step(
    state: TrainState, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> tuple[float, int]:
    """One optimiser step on this process's batch (uint8 images, int labels); returns the
    global mean loss and this process's count of correct (arg-max) predictions (0 without
    labels: a self-supervised model's forward returns its loss, `vitlab.train.selfsup`)."""
    cfg, model, dev = ctx.cfg, state.model, ctx.info.device
    torch.manual_seed(mix_seed(cfg.seed, state.step, ctx.info.rank, 1))  # dropout, mixup
    model.train()
    x = normalize(x.to(dev, non_blocking=True), ctx.mean, ctx.std)
    y = y.to(dev, non_blocking=True)
    hard = y
    labelled = cfg.objective == "supervised"
    mix = mix_transform(cfg.mixup, cfg.cutmix, ctx.num_classes) if labelled else None
    if mix is not None:
        x, y = mix(x, y)
    loss_sum, correct = torch.zeros((), device=dev), 0
    n = cfg.accum_steps
    for i, (xm, ym, hm) in enumerate(zip(x.chunk(n), y.chunk(n), hard.chunk(n))):
        sync = i == n - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync(), ctx.autocast():
            if labelled:
                logits, loss = _supervised(model, xm, ym, ctx)
            else:
                loss = model(xm).float()
        (state.scaler.scale(loss / n) if state.scaler else loss / n).backward()
        loss_sum += loss.detach() * len(xm) / len(x)
        if labelled:
            correct += int((logits.argmax(-1) == hm).sum())
    _check_finite(state, loss_sum, ctx)
    _optimizer_step(state, cfg)
    return float(loss_sum), correct


def _supervised(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that count as the prediction, and the loss: cross-entropy with the labels,
    or with a teacher DeiT's objective (the prediction: the mean of the two heads)."""
    cfg = ctx.cfg
    out = model(x)
    if ctx.teacher is None:
        return out, F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
    cls_logits, dist_logits = student_heads(out)
    loss = distillation_loss(
        cls_logits, dist_logits, ctx.teacher(x), y, cfg.distill, cfg.distill_alpha,
        cfg.distill_tau, cfg.label_smoothing,
    )  # fmt: skip
    return (cls_logits + dist_logits) / 2, loss


def _check_finite(state: TrainState, loss: torch.Tensor, ctx: StepContext) -> None:
    """Stop before the weights are touched when any process saw a NaN/inf loss."""
    total = all_reduce_sum(loss.clone()) / ctx.info.world
    loss.copy_(total)
    if not torch.isfinite(total):
        state.optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(
            f"the loss became {float(total)} at step {state.step}; the weights of the last "
            f"good checkpoint are kept in {ctx.cfg.out}; lower the learning rate "
            f"(--set lr={ctx.cfg.lr / 10:g}) or clip gradients (--set clip_grad=1.0)"
        )


def _optimizer_step(state: TrainState, cfg: TrainConfig) -> None:
    opt, scaler = state.optimizer, state.scaler
    if cfg.clip_grad:
        if scaler is not None:
            scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(state.model.parameters(), cfg.clip_grad)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(unwrap_model(state.model))
    state.step += 1


# ---------------------------------------------------------------------------------- epochs
def train_one_epoch(
    state: TrainState, loader: DataLoader, ctx: StepContext, total_steps: int, on_step=None
) -> dict[str, float]:
    """Run the loader's batches (stopping at `total_steps`); returns mean loss, accuracy, img/s.
    `on_step(state)` runs after every step (checkpointing)."""
    loss_sum, correct, seen, skipped, t0 = 0.0, 0, 0, 0, time.perf_counter()
    bar = progress_bar(
        loader, disable=not ctx.info.main, leave=False, dynamic_ncols=True, unit="batch"
    )
    for x, y, skip in bar:
        if state.step >= total_steps:
            break
        skipped += skip
        if len(y) == 0:
            continue
        t_step = time.perf_counter()
        loss, ok = train_step(state, x, y, ctx)
        state.train_time += time.perf_counter() - t_step
        state.images += len(y) * ctx.info.world
        loss_sum, correct, seen = loss_sum + loss * len(y), correct + ok, seen + len(y)
        if state.step % ctx.cfg.log_every == 0 or state.step == total_steps:
            rate = seen * ctx.info.world / (time.perf_counter() - t0)
            lr = state.optimizer.param_groups[0]["lr"]
            acc = {"acc": f"{correct / seen:.3f}"} if ctx.cfg.objective == "supervised" else {}
            bar.set_postfix(  # shown at the bar's next refresh, at most every refresh_seconds()
                loss=f"{loss:.3f}", **acc, lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False
            )
        if on_step is not None:
            on_step(state)
    counts = all_reduce_sum(torch.tensor([loss_sum, correct, seen, skipped], dtype=torch.float64))
    elapsed = time.perf_counter() - t0
    state.skipped += int(counts[3])
    seen_all = max(1.0, float(counts[2]))
    stats = {"train_loss": float(counts[0]) / seen_all}
    if ctx.cfg.objective == "supervised":
        stats["train_acc"] = float(counts[1]) / seen_all
    return {**stats, "img_s": float(counts[2]) / max(elapsed, 1e-9)}
