"""A whole run: data, model, optimiser, resume, the epoch loop, checkpoints and the final report.

`fit(cfg)` trains from scratch or, with `cfg.init_from`, fine-tunes (paper section 3.2: the
pre-trained head is replaced by a zero-initialised one for the new classes, and the position
embeddings are resampled when `img_size` changes).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vitlab.data.datasets import load_data
from vitlab.data.loader import KeyBatchSampler, build_loader
from vitlab.data.sets import DataSplits, ImageSet, ShardSet
from vitlab.data.subsets import balanced_subset, select_classes
from vitlab.data.transforms import AugConfig
from vitlab.data.wds import ShardStream
from vitlab.errors import ConfigError
from vitlab.evaluate import eval_augmentation, evaluate, report_dict, write_report
from vitlab.files import write_text
from vitlab.models.flops import model_flops
from vitlab.models.registry import create_model, get_config
from vitlab.runtime.device import can_compile, device_name, keep_freed_memory, unwrap_model
from vitlab.runtime.precision import resolve_precision
from vitlab.train import pretrain
from vitlab.train import report as rep
from vitlab.train.config import TrainConfig, accumulation_for, save_config
from vitlab.train.distill import Teacher, load_teacher
from vitlab.train.distributed import DistInfo, barrier, init_distributed, wrap_model
from vitlab.train.loop import StepContext, train_one_epoch
from vitlab.train.optim import Cooldown, build_ema, build_optimizer, build_scheduler
from vitlab.train.pretrain import check_objective
from vitlab.train.state import (
    RUN_FILES,
    TrainState,
    check_same_run,
    clear_run,
    find_resume,
    read_state,
    refuse_to_replace,
    restore,
    save_state,
)
from vitlab.train.whiten import init_patch_embed, patch_embedding
from vitlab.weights.checkpoint import load_checkpoint, record_init

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


def model_for_data(cfg: TrainConfig, data: DataSplits) -> nn.Module:
    """A new model sized for the data, or (fine-tuning) a loaded one with a new head and the
    `dont_load` parameters left at their initial values, its starting weights' hash noted in
    its config (`record_init`: every checkpoint of the run carries it, and `vitlab soup`
    averages only fine-tunes of one start)."""
    fit_size = {"img_size": cfg.img_size} if cfg.img_size else {}
    fit = {"num_classes": data.num_classes, "class_names": data.class_names, **fit_size}
    if cfg.objective != "supervised":  # an encoder without a head, inside the objective
        fit = {"num_classes": 0, "class_names": None, **fit_size}
    if cfg.init_from:
        torch.manual_seed(cfg.seed)  # the initial values of what is not loaded
        model = load_checkpoint(cfg.init_from, dont_load=cfg.dont_load, **{**cfg.model_args, **fit})
        record_init(model)
    else:
        torch.manual_seed(cfg.seed)
        from_data = {"in_chans": data.in_chans, "mean": data.mean, "std": data.std}
        model = create_model(cfg.model, **{**from_data, **cfg.model_args, **fit})  # args win
        if cfg.patch_init == "whiten":
            aug = eval_augmentation(model)
            init_patch_embed(model, data.train, aug, cfg.patch_init_images, cfg.seed)
    if cfg.freeze_patch_embed:
        patch_embedding(model, "freeze_patch_embed").requires_grad_(False)
    if cfg.objective != "supervised":
        check_objective(cfg, model.cfg)
        model = pretrain.wrap(cfg, model)
    return model.train()


def augmentations(cfg: TrainConfig, model: nn.Module) -> tuple[AugConfig, AugConfig]:
    """The training augmentation `cfg` asks for at the model's resolution, and the model's own
    evaluation preprocessing."""
    model = pretrain.encoder_of(model)
    c = model.cfg
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
    return train, eval_augmentation(model)


def steps_per_epoch(n: int, cfg: TrainConfig, info: DistInfo) -> int:
    """`cfg.epoch_steps`, else the steps of one pass over the `n` training images."""
    spe = (n // info.world) // (cfg.batch_size // info.world)
    if cfg.epoch_steps and spe:
        return cfg.epoch_steps
    if spe == 0:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the {n} training images; lower it"
        )
    return spe


def total_steps(cfg: TrainConfig, n: int, info: DistInfo) -> int:
    """The run's optimiser steps (with early stopping: the most it may take)."""
    return cfg.steps or math.ceil(cfg.epochs * steps_per_epoch(n, cfg, info))


def _loader(
    images: ImageSet | ShardSet,
    aug: AugConfig,
    cfg: TrainConfig,
    info: DistInfo,
    train: bool = False,
    spe: int = 0,
) -> tuple[DataLoader, KeyBatchSampler | ShardStream]:
    """This process's loader of `(x, y, skipped)` batches and what `set_epoch` goes to."""
    return build_loader(
        images,
        aug,
        max(1, cfg.batch_size // info.world),
        seed=cfg.seed,
        train=train,
        steps_per_epoch=spe,
        workers=cfg.workers,
        rank=info.rank,
        world=info.world,
    )


def build_state(
    cfg: TrainConfig, model: nn.Module, info: DistInfo, total: int, spe: int
) -> TrainState:
    model = model.to(info.device)
    ema = build_ema(model, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None and cfg.strategy == "fsdp" and info.world > 1:
        raise ConfigError("ema_decay is not supported with --strategy fsdp; use ddp or drop EMA")
    if cfg.optimizer == "muon" and cfg.strategy == "fsdp" and info.world > 1:
        raise ConfigError(
            "optimizer=muon orthogonalises whole matrices, which --strategy fsdp shards: use "
            "--strategy ddp or optimizer=adamw"
        )
    wrapped = wrap_model(model, info, cfg.strategy)
    sharded = cfg.strategy == "fsdp" and info.world > 1
    opt = build_optimizer(wrapped, cfg, fused=not sharded)
    cooldown = Cooldown() if cfg.cooldown else None
    sched = build_scheduler(opt, cfg, spe, total, cooldown)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    if cfg.compile and can_compile(info.device):
        wrapped = torch.compile(wrapped)
    return TrainState(wrapped, opt, sched, scaler, ema, cooldown=cooldown)


def fit(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False) -> RunResult:
    """Train (or fine-tune) as `cfg` says, resuming from `resume` ("auto" or a path). A run
    directory that already holds a run is refused unless `overwrite`, which removes that run's
    files and starts over there."""
    if resume is not None and overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts one over: pass one")
    if not cfg.init_from:  # a bad model name or model_args value is said before any work
        check_objective(cfg, get_config(cfg.model, **cfg.model_args))
    info = setup_runtime(cfg)
    run_dir = Path(cfg.out)
    resume_path, saved = _prepare_run_dir(run_dir, resume, overwrite, info)
    resumed = saved["config"].get("precision") if saved is not None else None
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, info.device, resumed))
    data = training_data(cfg)
    if cfg.patience and data.val is None:
        raise ConfigError(
            f"patience={cfg.patience} stops on validation accuracy, but {data.name} has no "
            "validation split: set val_split (e.g. --set val_split=0.05)"
        )
    cfg = fit_batch_to_data(cfg, len(data.train), info.world)
    model = model_for_data(cfg, data)
    teacher = distillation_teacher(cfg, data, model, info)
    spe = steps_per_epoch(len(data.train), cfg, info)
    total = total_steps(cfg, len(data.train), info)
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
    _train_epochs(cfg, data, state, info, total, spe, run_dir, teacher)
    return RunResult(run_dir, final_report(cfg, data, state, info, run_dir, teacher), state)


def distillation_teacher(
    cfg: TrainConfig, data: DataSplits, model: nn.Module, info: DistInfo
) -> Teacher | None:
    """`cfg.teacher` loaded and checked against the data's classes (before any training), and
    the student set to return both heads' logits in training (`set_distilled_training`)."""
    if not cfg.teacher:
        return None
    teacher = load_teacher(cfg.teacher, data.num_classes, data.class_names, model.cfg, info.device)
    if hasattr(model, "set_distilled_training"):
        model.set_distilled_training(True)
    if info.main:
        head = "its distillation token's head" if getattr(model.cfg, "distill_token", False) else (
            "its only head (no distillation token)")  # fmt: skip
        log.info("distilling (%s) from %s into %s", cfg.distill, cfg.teacher, head)
    return teacher


def _prepare_run_dir(
    run_dir: Path, resume: str | None, overwrite: bool, info: DistInfo
) -> tuple[Path | None, dict[str, Any] | None]:
    """The state to resume from (and its contents), after refusing to replace another run or,
    with `overwrite`, clearing its files; says so when there is nothing to resume."""
    resume_path = find_resume(resume, run_dir)
    if resume is not None and resume_path is None and info.main:
        log.warning("--resume: no run in %s yet; starting a new one there", run_dir)
    if not overwrite:
        refuse_to_replace(run_dir, resume_path)
    elif resume_path is None and info.main:
        clear_run(run_dir)
    return resume_path, (read_state(resume_path) if resume_path is not None else None)


def training_data(cfg: TrainConfig) -> DataSplits:
    """The run's data: `cfg.data` with the validation images held out of the training split,
    then the images `cfg` chooses (`choose_images`)."""
    data = load_data(
        cfg.data,
        cfg.data_root,
        download=cfg.download,
        val_split=cfg.val_split,
        seed=cfg.seed,
        labelled=cfg.objective == "supervised",
    )
    return choose_images(data, cfg)


def choose_images(data: DataSplits, cfg: TrainConfig) -> DataSplits:
    """The classes `cfg.classes` names (all by default), then the class-balanced subset of the
    training images `cfg.train_images` or `cfg.train_per_class` asks for (`data` itself is not
    changed); refused when there is nothing to tell apart (one class)."""
    if cfg.classes:
        data = select_classes(data, cfg.classes)
    if cfg.train_images or cfg.train_per_class:
        train = balanced_subset(
            data.train,
            cfg.seed,
            total=cfg.train_images,
            per_class=cfg.train_per_class,
            names=data.class_names,
        )
        data = replace(data, train=train)
    if data.num_classes < 2 and cfg.objective == "supervised":
        raise ConfigError(
            f"{data.name} has {data.num_classes} class ({', '.join(data.class_names)}): a "
            "classifier learns to tell classes apart; give it one folder per class, at least 2 "
            "(a flat folder of unlabelled images is for `vitlab pretrain`)"
        )
    return data


def fit_batch_to_data(cfg: TrainConfig, n: int, world: int = 1) -> TrainConfig:
    """`cfg` with a batch the data can fill: a batch larger than the `n` training images
    becomes all of them (shared evenly over `world` processes), split into accumulated
    micro-batches of at most the size the config asked for, and the change is logged.
    (Fine-tuning a folder of 36 photos with the paper's batch of 512 would otherwise stop.)"""
    per_process = n // world
    if cfg.batch_size // world <= per_process:
        return cfg
    if per_process == 0:
        raise ConfigError(f"{n} training images cannot be shared by {world} processes")
    batch = per_process * world
    accum = accumulation_for(batch, cfg.batch_size // cfg.accum_steps)
    log.warning(
        "batch_size %d is more than the %d training images: training with batch %d (%d "
        "accumulated micro-batch(es) of %d) instead; set batch_size and accum_steps to choose",
        cfg.batch_size, n, batch, accum, batch // accum,
    )  # fmt: skip
    return replace(cfg, batch_size=batch, accum_steps=accum)


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
        pretrain.encoder_of(m).num_params() / 1e6,
        m.cfg.img_size,
        total,
        spe,
        cfg.batch_size,
        run_dir,
    )


def _train_epochs(
    cfg, data, state: TrainState, info, total: int, spe: int, run_dir: Path, teacher=None
) -> None:
    train_aug, eval_aug = augmentations(cfg, state.model)
    c = unwrap_model(state.model).cfg
    ctx = StepContext(cfg, info, tuple(c.mean), tuple(c.std), data.num_classes, teacher)
    loader, sampler = _loader(data.train, train_aug, cfg, info, train=True, spe=spe)
    # Without a validation split the test split is evaluated each epoch to be watched, under
    # test_* keys: nothing (not the best checkpoint) is chosen by it.
    split, held = ("val", data.val) if data.val is not None else ("test", data.test)
    val_loader = _loader(held, eval_aug, cfg, info)[0] if held is not None else None
    watch_test = cfg.watch_test and split == "val" and data.test is not None
    test_loader = _loader(data.test, eval_aug, cfg, info)[0] if watch_test else None
    epochs = math.ceil(total / spe)
    shown = None  # the images of MAE's reconstruction pictures

    def on_step(s: TrainState) -> None:
        if cfg.ckpt_every and s.step % cfg.ckpt_every == 0 and s.step % spe and s.step < total:
            save_state(s, cfg, run_dir, info.main)

    while not finished(cfg, state, spe, total):
        end = _start_cooldown(cfg, state, spe, total, info)
        t0 = time.perf_counter()
        epoch, skip = divmod(state.step, spe)
        sampler.set_epoch(epoch, skip)
        if info.main:
            log.info("epoch %d/%d", epoch + 1, epochs)
        stats = train_one_epoch(state, loader, ctx, end, on_step)
        row = {"epoch": epoch + 1, "step": state.step, "lr": state.scheduler.get_last_lr()[0]}
        row.update(stats, train_s=state.train_time)  # optimiser steps so far, in seconds
        last = state.step >= end
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            metrics = _validate(cfg, state.eval_model, val_loader, ctx, split)
            row.update({f"{split}_{k}": v for k, v in metrics.items()})
            if test_loader is not None:
                metrics = _validate(cfg, state.eval_model, test_loader, ctx, "test")
                row.update({f"test_{k}": v for k, v in metrics.items()})
        if cfg.objective == "mae":  # every rank: an FSDP forward is a collective
            shown = shown if shown is not None else _first_images(val_loader or loader)
            path = pretrain.reconstruction_path(run_dir, epoch + 1)
            pretrain.save_reconstructions(state.eval_model, shown, ctx, path, write=info.main)
        _log_epoch(info, row, split)
        state.history.append(row)
        state.wall_time += time.perf_counter() - t0  # the checkpoint below saves it
        _end_of_epoch(cfg, state, info, run_dir, row)
    if info.main and stalled(cfg, state):
        log.info("early stop at step %d of %d: no better validation %s in %d passes%s",
                 state.step, total, watched(cfg).removeprefix("val_"), cfg.patience,
                 " and the cool-down after them" if cfg.cooldown else "")  # fmt: skip


def _validate(cfg: TrainConfig, model: nn.Module, loader: DataLoader, ctx, split: str) -> dict:
    """One validation pass: loss, top-1 and top-5; without labels, the objective's loss."""
    if cfg.objective != "supervised":
        return {"loss": pretrain.evaluate_loss(model, loader, cfg, ctx, desc=split)}
    res = evaluate(model, loader, ctx.eval_context(), desc=split)
    return {"loss": res.loss, "acc": res.top1, "top5": res.top5}


def _first_images(loader: DataLoader) -> torch.Tensor:
    """The first few images of a loader, as it prepares them (uint8 (n, C, H, W))."""
    return next(iter(loader))[0][: pretrain.SHOWN]


def watched(cfg: TrainConfig) -> str:
    """The validation figure that picks the best checkpoint and drives early stopping: the
    accuracy, or without labels the objective's loss."""
    return "val_acc" if cfg.objective == "supervised" else "val_loss"


def improved(cfg: TrainConfig, row: dict, best: dict) -> bool:
    """Whether an epoch's `row` beats the `best` so far on the watched figure."""
    key = watched(cfg)
    if row.get(key) is None:
        return False
    if key not in best:
        return True
    return row[key] > best[key] if key == "val_acc" else row[key] < best[key]


def first_stall(cfg: TrainConfig, history: list[dict]) -> dict | None:
    """The validation row after which `cfg.patience` passes in a row had first not beaten the
    best one (None: not yet, or no patience). Read from the history, so a resumed run stops, or
    cools down, where the uninterrupted one did."""
    if not cfg.patience:
        return None
    key, best, since = watched(cfg), {}, 0
    for row in history:
        if row.get(key) is None:
            continue
        if improved(cfg, row, best):
            best, since = row, 0
        else:
            since += 1
        if since >= cfg.patience:
            return row
    return None


def stalled(cfg: TrainConfig, state: TrainState) -> bool:
    """Early stopping: `cfg.patience` validation passes in a row have not beaten the best one
    (with a cool-down: they had not, when it started)."""
    return first_stall(cfg, state.history) is not None


def cooldown_window(cfg: TrainConfig, history: list[dict], spe: int, total: int) -> tuple | None:
    """(start, end) steps of the cool-down (`cfg.cooldown`): from the step where validation
    first stalled, `cooldown` x those steps (at least one validation pass), within the cap."""
    if not cfg.cooldown:
        return None
    row = first_stall(cfg, history)
    if row is None:
        return None
    start = row["step"]
    return start, min(total, start + max(spe, round(cfg.cooldown * start)))


def finished(cfg: TrainConfig, state: TrainState, spe: int, total: int) -> bool:
    """The run is over: its steps are done, or validation stalled (`patience`) and, with a
    cool-down, that is done too."""
    if state.step >= total:
        return True
    window = cooldown_window(cfg, state.history, spe, total)
    if window is not None:
        return state.step >= window[1]
    return not cfg.cooldown and stalled(cfg, state)


def _start_cooldown(cfg: TrainConfig, state: TrainState, spe: int, total: int, info) -> int:
    """Set the schedule's cool-down once validation has stalled (a resumed run: again, from
    its history); the step the current stretch of training ends at."""
    window = cooldown_window(cfg, state.history, spe, total)
    if window is None or state.cooldown is None:
        return total
    if state.cooldown.start is None and info.main:
        log.info("validation %s stalled for %d passes at step %d: cooling the learning rate "
                 "down to its floor by step %d, then stopping", watched(cfg).removeprefix("val_"),
                 cfg.patience, window[0], window[1])  # fmt: skip
    state.cooldown.start, state.cooldown.end = window
    return window[1]


def stop_reason(cfg: TrainConfig, state: TrainState) -> str:
    """Why the run ended: "patience" (early stopping), "cap" (early stopping was on but the
    step budget ran out first: the run may not have converged) or "budget" (no early stopping:
    the run trains for its steps)."""
    if stalled(cfg, state):
        return "patience"
    return "cap" if cfg.patience else "budget"


def _log_epoch(info: DistInfo, row: dict, split: str) -> None:
    """One line per epoch: the training figures, and the held-out split's when it ran."""
    if not info.main:
        return

    def figures(part: str) -> str:
        acc = f" acc {row[f'{part}_acc']:.4f}" if f"{part}_acc" in row else ""
        return f"{part} loss {row[f'{part}_loss']:.4f}{acc}"

    held = f" | {figures(split)}" if f"{split}_loss" in row else ""
    log.info("epoch %d: %s%s | %.0f img/s", row["epoch"], figures("train"), held, row["img_s"])


def _end_of_epoch(cfg, state: TrainState, info, run_dir: Path, row: dict) -> None:
    """Best checkpoint (by validation accuracy), last checkpoint, metrics files, curves."""
    better = improved(cfg, row, state.best)
    if better:
        key = watched(cfg)
        state.best = {key: row[key], "epoch": row["epoch"], "step": state.step}
    save_state(state, cfg, run_dir, info.main, best=better)
    if info.main:
        rep.write_history(run_dir, state.history)
        rep.plot_curves(state.history, run_dir / "curves.png")
    barrier()


def final_report(
    cfg, data: DataSplits, state: TrainState, info, run_dir: Path, teacher: Teacher | None = None
) -> dict[str, Any]:
    """Evaluate the published weights (the last, or with `cfg.report_best` the best by
    validation accuracy) on the test split, else on validation, and write the report; without
    either split, the report holds the training figures only. The evaluation runs in fp32
    whatever the training precision, as `vitlab eval` does, so that `vitlab eval` on the
    weights the report names gives the report's figures. A distilled run's report holds the
    teacher's figures on the same split beside the student's (`teacher`)."""
    split, images = ("test", data.test) if data.test is not None else ("val", data.val)
    weights, model = _published(cfg, state, run_dir, info)
    report: dict[str, Any] = {"split": None, "model": cfg.init_from or cfg.model}
    if cfg.objective != "supervised":
        report, images = _pretraining_figures(cfg, state, report), None
    elif images is not None:
        _, eval_aug = augmentations(cfg, model)
        c = unwrap_model(model).cfg
        ctx = StepContext(replace(cfg, precision="fp32"), info, c.mean, c.std, data.num_classes)
        loader = _loader(images, eval_aug, cfg, info)[0]
        res = evaluate(model, loader, ctx.eval_context(), desc=split)
        report = report_dict(res, data.class_names, split, cfg.init_from or cfg.model,
                             cfg.eval_flip)  # fmt: skip
        if teacher is not None:
            report["teacher"] = _teacher_figures(cfg, teacher, images, split, data, info)
    last = state.history[-1] if state.history else {}
    m = pretrain.encoder_of(model)
    report.update(
        train_images=len(data.train),
        train_loss=last.get("train_loss"),
        train_acc=last.get("train_acc"),
        epochs=len(state.history),
        steps=state.step,
        max_steps=total_steps(cfg, len(data.train), info),
        stopped=stop_reason(cfg, state),
        cooldown_from=_cooldown_start(cfg, state, data, info),
        batch_size=cfg.batch_size,
        params=m.num_params(),
        gflops=model_flops(m.cfg) / 1e9,  # forward, per image
        train_minutes=state.train_time / 60,
        wall_minutes=state.wall_time / 60,
        img_s=state.images / max(state.train_time, 1e-9),
        skipped=state.skipped,
        best=state.best,
        weights=str(weights),
        machine=f"{device_name(info.device)}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}",
    )
    if cfg.objective != "supervised":
        report["train_acc"] = None
    if info.main and images is not None:
        title = f"{data.name} {split}: top-1 {100 * res.top1:.2f}%"
        write_report(run_dir, report, data.class_names, title)
    elif info.main:
        write_text(run_dir / RUN_FILES["report"], json.dumps(report, indent=2) + "\n")
    return report


def _cooldown_start(cfg, state: TrainState, data, info) -> int | None:
    """The step the cool-down started at (`cfg.cooldown`), or None without one."""
    spe = steps_per_epoch(len(data.train), cfg, info)
    window = cooldown_window(cfg, state.history, spe, total_steps(cfg, len(data.train), info))
    return window[0] if window else None


def _teacher_figures(cfg, teacher: Teacher, images, split: str, data, info) -> dict[str, Any]:
    """The teacher's own top-1 and top-5 on the split the student's report is about, with its
    own evaluation preprocessing."""
    t = teacher.model
    ctx = StepContext(replace(cfg, precision="fp32"), info, t.cfg.mean, t.cfg.std,
                      data.num_classes).eval_context()  # fmt: skip
    p = next(iter(t.parameters()), None)
    ctx.device = p.device if p is not None else torch.device("cpu")  # ONNX: on the CPU
    loader = _loader(images, eval_augmentation(t), cfg, info)[0]
    res = evaluate(t, loader, ctx, desc=f"teacher {split}")
    return {"checkpoint": teacher.path, "distill": cfg.distill, "top1": res.top1,
            "top5": res.top5, "params": t.num_params()}  # fmt: skip


def _pretraining_figures(cfg, state: TrainState, report: dict[str, Any]) -> dict[str, Any]:
    """A run without labels has no accuracy: its objective and validation loss (of the
    published weights: the last, or with `report_best` the best)."""
    rows = [h for h in state.history if "val_loss" in h]
    at = state.best if cfg.report_best and state.best else (rows[-1] if rows else {})
    val = at.get("val_loss")
    return {**report, "split": "val" if val is not None else None, "objective": cfg.objective,
            "top1": None, "loss": val, "val_loss": val}  # fmt: skip


def _published(cfg, state: TrainState, run_dir: Path, info) -> tuple[Path, nn.Module]:
    """The weights the report is about: the last (the live evaluation model), or with
    `cfg.report_best` best.safetensors as saved (the last when no epoch was validated)."""
    best = run_dir / RUN_FILES["best"]
    if cfg.report_best and not state.best and info.main:
        log.warning("report_best: no epoch was validated (no validation split), so the report "
                    "is about the last weights; set val_split to hold some images out")  # fmt: skip
    if not cfg.report_best or not state.best:
        return run_dir / RUN_FILES["last"], state.eval_model
    barrier()  # rank 0 wrote it
    if cfg.objective != "supervised":  # the file holds the encoder; the figures are saved
        return best, state.eval_model
    return best, load_checkpoint(best).to(info.device).eval()
