"""The training and evaluation loops: `train_step`, `train_one_epoch`, `evaluate`.

One optimiser step takes the process's share of the global batch, splits it into
`accum_steps` micro-batches (gradients synchronised across processes on the last one only),
checks that the loss is finite on every process before touching the weights, clips the global
gradient norm, steps the optimiser, the per-step schedule and the EMA.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from vitlab.data.datasets import AugmentedDataset, BatchKey
from vitlab.data.transforms import mix_transform, normalize
from vitlab.data.wds import ShardStream
from vitlab.errors import VitlabError
from vitlab.models.layers import PackedWeights
from vitlab.progress import progress_bar
from vitlab.train.config import TrainConfig
from vitlab.train.distributed import DistInfo, all_reduce_sum
from vitlab.train.state import TrainState
from vitlab.weights.checkpoint import unwrap_model


class TrainingDiverged(VitlabError):
    """The loss became NaN or infinite."""


def mix_seed(*parts: int) -> int:
    """A reproducible 62-bit seed from integers (Python hashes int tuples deterministically)."""
    return hash(tuple(parts)) & (2**62 - 1)


# ------------------------------------------------------------------------------- batching
class KeyBatchSampler(Sampler):
    """Yields `(seed, indices)` per batch for `AugmentedDataset.__getitems__`.

    Training order comes from `DistributedSampler` (seeded by seed and epoch, sharded by rank);
    each batch's augmentation seed from (seed, global step, rank). Evaluation shards in order and
    pads every rank to the same number of batches with index -1 (label ignored)."""

    def __init__(
        self, n: int, batch: int, info: DistInfo, seed: int, train: bool, steps_per_epoch: int = 0
    ) -> None:
        self.n, self.batch, self.info, self.seed, self.train = n, batch, info, seed, train
        self.steps_per_epoch, self.epoch, self.skip = steps_per_epoch, 0, 0
        self.sampler = DistributedSampler(
            range(n), info.world, info.rank, shuffle=True, seed=seed, drop_last=True
        )

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Batches of `epoch`, leaving out its first `skip` (a run resumed mid-epoch)."""
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def _indices(self) -> list[int]:
        if self.train:
            return list(self.sampler)
        per = math.ceil(self.n / self.info.world)
        idx = [self.info.rank + self.info.world * i for i in range(per)]
        return [i if i < self.n else -1 for i in idx]

    def __len__(self) -> int:
        if self.train:
            return self.steps_per_epoch - self.skip
        return math.ceil(math.ceil(self.n / self.info.world) / self.batch)

    def __iter__(self) -> Iterator[BatchKey]:
        idx = self._indices()
        for b in range(self.skip, len(self) + self.skip):
            chunk = idx[b * self.batch : (b + 1) * self.batch]
            step = self.epoch * self.steps_per_epoch + b
            yield mix_seed(self.seed, step, self.info.rank, 0), chunk


def _identity(batch):
    return batch


def make_loader(
    dataset: AugmentedDataset | ShardStream, sampler: KeyBatchSampler | None, workers: int
) -> DataLoader:
    """Whole batches come from the dataset, `(x, y, skipped)`; workers prepare them ahead.

    An `AugmentedDataset` builds the batch the sampler's key names (`__getitems__`), and its
    workers live for the whole run. A `ShardStream` (no sampler) yields batches itself; its
    workers start afresh every epoch, so each one streams the epoch `set_epoch` chose."""
    batching = {"batch_size": None} if sampler is None else {"batch_sampler": sampler}
    return DataLoader(
        dataset,
        **batching,
        collate_fn=_identity,
        num_workers=workers,
        persistent_workers=workers > 0 and sampler is not None,
        prefetch_factor=4 if workers > 0 else None,
    )


# -------------------------------------------------------------------------------- stepping
@dataclass
class StepContext:
    """What a step needs besides the state: device, normalisation, loss, precision."""

    cfg: TrainConfig
    info: DistInfo
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=dtype)


def train_step(
    state: TrainState, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> tuple[float, int]:
    """One optimiser step on this process's batch (uint8 images, int labels); returns the
    global mean loss and this process's count of correct (arg-max) predictions."""
    cfg, model, dev = ctx.cfg, state.model, ctx.info.device
    torch.manual_seed(mix_seed(cfg.seed, state.step, ctx.info.rank, 1))  # dropout, mixup
    model.train()
    x = normalize(x.to(dev, non_blocking=True), ctx.mean, ctx.std)
    y = y.to(dev, non_blocking=True)
    hard = y
    mix = mix_transform(cfg.mixup, cfg.cutmix, ctx.num_classes)
    if mix is not None:
        x, y = mix(x, y)
    loss_sum, correct = torch.zeros((), device=dev), 0
    n = cfg.accum_steps
    for i, (xm, ym, hm) in enumerate(zip(x.chunk(n), y.chunk(n), hard.chunk(n))):
        sync = i == n - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync(), ctx.autocast():
            logits = model(xm)
            loss = F.cross_entropy(logits.float(), ym, label_smoothing=cfg.label_smoothing)
        (state.scaler.scale(loss / n) if state.scaler else loss / n).backward()
        loss_sum += loss.detach() * len(xm) / len(x)
        correct += int((logits.argmax(-1) == hm).sum())
    _check_finite(state, loss_sum, ctx)
    _optimizer_step(state, cfg)
    return float(loss_sum), correct


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
            bar.set_postfix(  # shown at the bar's next refresh, at most every refresh_seconds()
                loss=f"{loss:.3f}",
                acc=f"{correct / seen:.3f}",
                lr=f"{lr:.2e}",
                img_s=f"{rate:.0f}",
                refresh=False,
            )
        if on_step is not None:
            on_step(state)
    counts = all_reduce_sum(torch.tensor([loss_sum, correct, seen, skipped], dtype=torch.float64))
    elapsed = time.perf_counter() - t0
    state.skipped += int(counts[3])
    seen_all = max(1.0, float(counts[2]))
    return {
        "train_loss": float(counts[0]) / seen_all,
        "train_acc": float(counts[1]) / seen_all,
        "img_s": float(counts[2]) / max(elapsed, 1e-9),
    }


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    confusion: torch.Tensor  # (K, K): rows true class, columns predicted
    n: int
    skipped: int

    @property
    def per_class(self) -> torch.Tensor:
        return self.confusion.diag() / self.confusion.sum(1).clamp(min=1)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, ctx: StepContext, desc: str = "eval"
) -> EvalResult:
    """Top-1, top-5, loss and confusion matrix over the loader, summed over processes."""
    model.eval()
    K, dev = ctx.num_classes, ctx.info.device
    conf = torch.zeros(K * K, dtype=torch.float64)
    sums = torch.zeros(3, dtype=torch.float64)  # loss, top-5 hits, skipped
    packs = PackedWeights()  # the weights stay fixed during the pass
    bar = progress_bar(loader, disable=not ctx.info.main, leave=False, desc=desc)
    for x, y, skip in bar:
        sums[2] += skip
        x, y = normalize(x.to(dev), ctx.mean, ctx.std), y.to(dev)
        with ctx.autocast(), packs:
            logits = model(x).float()
        keep = y >= 0  # padding entries of the last rank's shard carry label -1
        logits, y = logits[keep], y[keep]
        sums[0] += float(F.cross_entropy(logits, y, reduction="sum")) if len(y) else 0.0
        top = logits.topk(min(5, K), -1).indices
        sums[1] += float((top == y[:, None]).any(-1).sum())
        conf += torch.bincount((y * K + top[:, 0]).cpu(), minlength=K * K).double()
    conf, sums = all_reduce_sum(conf.to(dev)).cpu(), all_reduce_sum(sums.to(dev)).cpu()
    n = int(conf.sum())
    conf = conf.view(K, K)  # (true, predicted)
    return EvalResult(
        loss=float(sums[0]) / max(n, 1),
        top1=float(conf.diag().sum()) / max(n, 1),
        top5=float(sums[1]) / max(n, 1),
        confusion=conf.long(),
        n=n,
        skipped=int(sums[2]),
    )
