"""A whole run: data, model, optimiser, resume, the epoch loop, checkpoints and the final report.

`fit(cfg)` trains from scratch or, with `cfg.init_from`, fine-tunes (paper section 3.2: the
pre-trained head is replaced by a zero-initialised one for the new classes, and the position
embeddings are resampled when `img_size` changes).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import vitlab
from vitlab.bench import keep_freed_memory, matmul_peak_gflops
from vitlab.data.datasets import AugmentedDataset, DataSplits, ImageSet, load_data
from vitlab.data.transforms import AugConfig
from vitlab.data.wds import ShardSet, ShardStream
from vitlab.errors import ConfigError
from vitlab.models.layers import onednn_linear
from vitlab.models.registry import create_model
from vitlab.train import report as rep
from vitlab.train.config import TrainConfig, save_config
from vitlab.train.distributed import DistInfo, barrier, init_distributed, wrap_model
from vitlab.train.loop import (
    EvalResult,
    KeyBatchSampler,
    StepContext,
    evaluate,
    make_loader,
    train_one_epoch,
)
from vitlab.train.optim import build_ema, build_optimizer, build_scheduler
from vitlab.train.state import (
    TrainState,
    check_same_run,
    clear_run,
    find_resume,
    read_state,
    refuse_to_replace,
    restore,
    save_state,
)
from vitlab.weights.checkpoint import unwrap_model

log = logging.getLogger("vitlab")


@dataclass
class RunResult:
    run_dir: Path
    report: dict[str, Any]
    state: TrainState


def setup_runtime(cfg: TrainConfig) -> DistInfo:
    """Threads, deterministic algorithms, process group, and on the CPU an allocator that keeps
    freed memory: without it every step's activations go back to the kernel and are faulted in
    again, and the Fashion-MNIST presets' steps ran 14% slower (2-core Xeon, both patch sizes)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("precision=fp16 needs a CUDA GPU; use precision=bf16 on a CPU")
    info = init_distributed(cfg.device)
    if info.device.type == "cpu":
        keep_freed_memory()
    return info


def build_model(cfg: TrainConfig, data: DataSplits) -> nn.Module:
    """A new model sized for the data, or (fine-tuning) a loaded one with a new head."""
    fit = {"num_classes": data.num_classes, "class_names": data.class_names}
    if cfg.img_size:
        fit["img_size"] = cfg.img_size
    if cfg.init_from:
        model = vitlab.load_checkpoint(cfg.init_from, **cfg.model_args, **fit)
        return model.train()
    torch.manual_seed(cfg.seed)
    return create_model(
        cfg.model,
        **{"in_chans": data.in_chans, "mean": data.mean, "std": data.std},
        **{**cfg.model_args, **fit},
    )


def augmentations(cfg: TrainConfig, model: nn.Module) -> tuple[AugConfig, AugConfig]:
    c = unwrap_model(model).cfg
    train = AugConfig(
        img_size=c.img_size,
        channels=c.in_chans,
        train=True,
        scale=cfg.scale,
        pad_crop=cfg.pad_crop,
        hflip=cfg.hflip,
        randaug_n=cfg.randaug_n,
        randaug_m=cfg.randaug_m,
        erase=cfg.random_erase,
        crop_pct=c.crop_pct,
    )
    return train, AugConfig(img_size=c.img_size, channels=c.in_chans, crop_pct=c.crop_pct)


def steps_per_epoch(n: int, cfg: TrainConfig, info: DistInfo) -> int:
    spe = (n // info.world) // (cfg.batch_size // info.world)
    if spe == 0:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the {n} training images; lower it"
        )
    return spe


def _loader(
    images: ImageSet | ShardSet,
    aug: AugConfig,
    cfg: TrainConfig,
    info: DistInfo,
    train: bool = False,
    spe: int = 0,
) -> tuple[DataLoader, KeyBatchSampler | ShardStream]:
    """This process's loader of `(x, y, skipped)` batches, and what `set_epoch` goes to:
    a key sampler over images we can index, or a stream over WebDataset shards."""
    batch = max(1, cfg.batch_size // info.world)
    if isinstance(images, ShardSet):
        where = {"rank": info.rank, "world": info.world, "workers": cfg.workers}
        stream = ShardStream(
            images, aug, batch, seed=cfg.seed, train=train, steps_per_epoch=spe, **where
        )
        return make_loader(stream, None, cfg.workers), stream
    sampler = KeyBatchSampler(len(images), batch, info, cfg.seed, train, steps_per_epoch=spe)
    return make_loader(AugmentedDataset(images, aug), sampler, cfg.workers), sampler


def _eval_loader(
    images: ImageSet | ShardSet, aug: AugConfig, cfg: TrainConfig, info: DistInfo
) -> DataLoader:
    return _loader(images, aug, cfg, info)[0]


def build_state(
    cfg: TrainConfig, model: nn.Module, info: DistInfo, total: int, spe: int
) -> TrainState:
    model = model.to(info.device)
    ema = build_ema(model, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None and cfg.strategy == "fsdp" and info.world > 1:
        raise ConfigError("ema_decay is not supported with --strategy fsdp; use ddp or drop EMA")
    wrapped = wrap_model(model, info, cfg.strategy)
    sharded = cfg.strategy == "fsdp" and info.world > 1
    opt = build_optimizer(wrapped, cfg, fused=not sharded)
    sched = build_scheduler(opt, cfg, spe, total)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    if cfg.compile and can_compile(info.device):
        wrapped = torch.compile(wrapped)
    return TrainState(wrapped, opt, sched, scaler, ema)


def can_compile(device: torch.device) -> bool:
    """Whether `torch.compile` can work here: on the CPU its code generator needs a C++
    compiler. Without one the run goes on uncompiled (same results, slower) with a warning."""
    if device.type != "cpu":
        return True
    names = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    if any(name and shutil.which(name) for name in names):
        return True
    log.warning(
        "compile: no C++ compiler found (g++, clang++ or $CXX), which torch.compile needs on "
        "the CPU; training without it (same results, slower). Install g++ to compile, or "
        "pass --set compile=false to silence this"
    )
    return False


def resolve_precision(precision: str, info: DistInfo, resumed: str | None = None) -> str:
    """`auto` -> "bf16" where bf16 matmuls are measured faster than fp32 here, else "fp32";
    a resumed run keeps `resumed`, the precision its first part chose (timings near the
    threshold could otherwise choose differently and change what the run computes).

    bf16 autocast is not faster on every CPU: it was 1.5x faster for the demo on an AMD EPYC
    with AVX512-BF16 (bf16 matmul peak 434 against 218 GFLOP/s in fp32), but 0.65x on an Intel
    Xeon VM whose AMX is not exposed (170 against 330), and CPUs without AVX512-BF16 emulate it.
    So the CPU times a 1024^3 matmul in both (about half a second); a GPU takes bf16 where it
    supports it. Under torchrun, rank 0 decides for every process."""
    if precision != "auto":
        return precision
    if resumed is not None:
        return resumed
    device = info.device
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu" or onednn_linear(torch.bfloat16) is None:
        return "fp32"
    choice = None
    if info.main:
        fp32 = matmul_peak_gflops(device, torch.float32, size=1024, reps=3)
        bf16 = matmul_peak_gflops(device, torch.bfloat16, size=1024, reps=3)
        choice = "bf16" if bf16 > 1.2 * fp32 else "fp32"
        log.info(
            "precision auto: %s (matmul %.0f GFLOP/s in bf16, %.0f in fp32)", choice, bf16, fp32
        )
    if info.world > 1 and torch.distributed.is_initialized():  # gloo on the CPU
        shared = [choice]
        torch.distributed.broadcast_object_list(shared, src=0)
        choice = shared[0]
    return choice


def fit(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False) -> RunResult:
    """Train (or fine-tune) as `cfg` says, resuming from `resume` ("auto" or a path). A run
    directory that already holds a run is refused unless `overwrite`, which removes that run's
    files and starts over there."""
    if resume is not None and overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts one over: pass one")
    info = setup_runtime(cfg)
    run_dir = Path(cfg.out)
    resume_path = find_resume(resume, run_dir)
    if not overwrite:
        refuse_to_replace(run_dir, resume_path)
    elif resume_path is None and info.main:
        clear_run(run_dir)
    saved = read_state(resume_path) if resume_path is not None else None
    resumed = saved["config"].get("precision") if saved is not None else None
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, info, resumed))
    data = load_data(
        cfg.data, cfg.data_root, download=cfg.download, val_split=cfg.val_split, seed=cfg.seed
    )
    model = build_model(cfg, data)
    spe = steps_per_epoch(len(data.train), cfg, info)
    total = cfg.steps or math.ceil(cfg.epochs * spe)
    state = build_state(cfg, model, info, total, spe)
    if saved is not None:
        check_same_run(saved["config"], cfg, resume_path)
        restore(state, saved)
        saved = None  # the live objects hold it now
        if info.main:
            log.info("resumed %s at step %d of %d", resume_path, state.step, total)
    if info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        _log_start(cfg, data, model, total, spe, run_dir)
    _train_epochs(cfg, data, state, info, total, spe, run_dir)
    return RunResult(run_dir, final_report(cfg, data, state, info, run_dir), state)


def _log_start(cfg, data: DataSplits, model, total: int, spe: int, run_dir: Path) -> None:
    m = unwrap_model(model)
    val = len(data.val) if data.val is not None else 0
    test = len(data.test) if data.test is not None else 0
    log.info(
        "%s: %d train / %d val / %d test images, %d classes; %s (%.2fM params, %d px); "
        "%d steps (%d per epoch, batch %d); run dir %s",
        data.name,
        len(data.train),
        val,
        test,
        data.num_classes,
        cfg.init_from or cfg.model,
        m.num_params() / 1e6,
        m.cfg.img_size,
        total,
        spe,
        cfg.batch_size,
        run_dir,
    )


def _train_epochs(cfg, data, state: TrainState, info, total: int, spe: int, run_dir: Path) -> None:
    train_aug, eval_aug = augmentations(cfg, state.model)
    c = unwrap_model(state.model).cfg
    ctx = StepContext(cfg, info, tuple(c.mean), tuple(c.std), data.num_classes)
    loader, sampler = _loader(data.train, train_aug, cfg, info, train=True, spe=spe)
    # Without a validation split the test split is evaluated each epoch to be watched, under
    # test_* keys: nothing (not the best checkpoint) is chosen by it.
    split, held = ("val", data.val) if data.val is not None else ("test", data.test)
    val_loader = _eval_loader(held, eval_aug, cfg, info) if held is not None else None
    epochs = math.ceil(total / spe)

    def on_step(s: TrainState) -> None:
        if cfg.ckpt_every and s.step % cfg.ckpt_every == 0 and s.step % spe and s.step < total:
            save_state(s, cfg, run_dir, info.main)

    while state.step < total:
        epoch, skip = divmod(state.step, spe)
        sampler.set_epoch(epoch, skip)
        if info.main:
            log.info("epoch %d/%d", epoch + 1, epochs)
        stats = train_one_epoch(state, loader, ctx, total, on_step)
        row = {"epoch": epoch + 1, "step": state.step, "lr": state.scheduler.get_last_lr()[0]}
        row.update(stats)
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or state.step >= total):
            res = evaluate(state.eval_model, val_loader, ctx, desc=split)
            metrics = {"loss": res.loss, "acc": res.top1, "top5": res.top5}
            row.update({f"{split}_{k}": v for k, v in metrics.items()})
            _log_epoch(info, row, split)
        state.history.append(row)
        _end_of_epoch(cfg, state, info, run_dir, row)


def _log_epoch(info: DistInfo, row: dict, split: str) -> None:
    if info.main:
        log.info(
            "epoch %d: train loss %.4f acc %.4f | %s loss %.4f acc %.4f | %.0f img/s",
            row["epoch"],
            row["train_loss"],
            row["train_acc"],
            split,
            row[f"{split}_loss"],
            row[f"{split}_acc"],
            row["img_s"],
        )


def _end_of_epoch(cfg, state: TrainState, info, run_dir: Path, row: dict) -> None:
    """Best checkpoint (by validation accuracy), last checkpoint, metrics files, curves."""
    improved = row.get("val_acc") is not None and row["val_acc"] > state.best.get("val_acc", -1)
    if improved:
        state.best = {"val_acc": row["val_acc"], "epoch": row["epoch"], "step": state.step}
    save_state(state, cfg, run_dir, info.main, best=improved)
    if info.main:
        rep.write_history(run_dir, state.history)
        rep.plot_curves(state.history, run_dir / "curves.png")
    barrier()


def final_report(cfg, data: DataSplits, state: TrainState, info, run_dir: Path) -> dict[str, Any]:
    """Evaluate the published weights on the test split (else validation) and write the report."""
    split, images = ("test", data.test) if data.test is not None else ("val", data.val)
    if images is None:
        return {}
    _, eval_aug = augmentations(cfg, state.model)
    c = unwrap_model(state.model).cfg
    ctx = StepContext(cfg, info, tuple(c.mean), tuple(c.std), data.num_classes)
    res = evaluate(state.eval_model, _eval_loader(images, eval_aug, cfg, info), ctx, desc=split)
    report = report_dict(res, data.class_names, split, cfg.init_from or cfg.model)
    report.update(
        epochs=len(state.history),
        steps=state.step,
        train_minutes=state.train_time / 60,
        img_s=state.images / max(state.train_time, 1e-9),
        skipped=state.skipped,
        best=state.best,
        weights=str(run_dir / "last.safetensors"),
    )
    if info.main:
        rep.write_report(run_dir, report)
        title = f"{data.name} {split}: top-1 {100 * res.top1:.2f}%"
        rep.plot_confusion(res.confusion, data.class_names, run_dir / "confusion.png", title)
    return report


def report_dict(res: EvalResult, names: tuple[str, ...], split: str, model: str) -> dict[str, Any]:
    return {
        "split": split,
        "model": model,
        "n": res.n,
        "top1": res.top1,
        "top5": res.top5,
        "loss": res.loss,
        "per_class": {n: float(a) for n, a in zip(names, res.per_class)},
        "confusion": res.confusion.tolist(),
        "skipped_eval": res.skipped,
    }


def eval_checkpoint(
    checkpoint: str,
    data_spec: str,
    root: str | None,
    split: str,
    batch_size: int,
    out: Path | None,
    download: bool = False,
) -> dict[str, Any]:
    """`vitlab eval`: a checkpoint's top-1/top-5/per-class accuracy and confusion matrix."""
    info = DistInfo()
    model = vitlab.load_checkpoint(checkpoint)
    data = load_data(data_spec, root, download=download)
    images = getattr(data, split)
    if images is None:
        raise ConfigError(f"{data.name} has no {split} split; try --split test or --split val")
    if model.cfg.num_classes != data.num_classes:
        raise ConfigError(
            f"{checkpoint} has {model.cfg.num_classes} classes but {data.name} has "
            f"{data.num_classes}; fine-tune it first (vitlab finetune --from {checkpoint})"
        )
    cfg = TrainConfig(batch_size=batch_size)
    aug = AugConfig(
        img_size=model.cfg.img_size, channels=model.cfg.in_chans, crop_pct=model.cfg.crop_pct
    )
    ctx = StepContext(cfg, info, tuple(model.cfg.mean), tuple(model.cfg.std), data.num_classes)
    t0 = time.perf_counter()
    res = evaluate(model, _eval_loader(images, aug, cfg, info), ctx, desc=split)
    report = report_dict(res, data.class_names, split, str(checkpoint))
    report["img_s"] = res.n / max(time.perf_counter() - t0, 1e-9)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        rep.write_report(out, report)
        title = f"{data.name} {split}: top-1 {100 * res.top1:.2f}%"
        rep.plot_confusion(res.confusion, data.class_names, out / "confusion.png", title)
    return report
