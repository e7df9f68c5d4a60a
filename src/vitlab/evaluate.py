"""Evaluation: top-1, top-5, loss, per-class accuracy and the confusion matrix of a model over a
loader, and `vitlab eval` (a checkpoint on a dataset split) with its report.json and
confusion.png.

`evaluate` runs on any process of a run: `EvalContext.reduce` sums the counts over processes
(training passes its all-reduce), and padding entries (label -1, which keep every process at the
same number of batches) are left out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitlab.data.datasets import load_data
from vitlab.data.loader import build_loader
from vitlab.data.sets import DataSplits
from vitlab.data.subsets import select_classes
from vitlab.data.transforms import AugConfig, normalize
from vitlab.errors import ConfigError
from vitlab.figures import new_figure, save_figure
from vitlab.files import write_text
from vitlab.preprocess import preprocess_of
from vitlab.progress import progress_bar
from vitlab.runtime.device import pick_device
from vitlab.runtime.kernels import PackedWeights
from vitlab.runtime.precision import autocast, in_precision, inference_precision, weights_dtype

log = logging.getLogger("vitlab")


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class EvalContext:
    """What an evaluation pass needs besides the model and the loader."""

    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    precision: str = "fp32"  # autocast precision ("bf16" runs the matmuls in bf16)
    reduce: Callable[[torch.Tensor], torch.Tensor] = _no_reduce  # sum over processes
    progress: bool = True
    # test-time augmentation: also run every image mirrored left-right and average the two
    # logits (for data whose labels survive a mirror, as Fashion-MNIST's do; not digits)
    flip: bool = False


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
    model: nn.Module, loader: DataLoader, ctx: EvalContext, desc: str = "eval"
) -> EvalResult:
    """Top-1, top-5, loss and confusion matrix over the loader's `(x, y, skipped)` batches of
    uint8 images, summed over processes with `ctx.reduce`; with `ctx.flip`, of the mean logits
    of each image and its mirror."""
    model.eval()
    K, dev = ctx.num_classes, ctx.device
    conf = torch.zeros(K * K, dtype=torch.float64)
    sums = torch.zeros(3, dtype=torch.float64)  # loss, top-5 hits, skipped
    packs = PackedWeights()  # the weights stay fixed during the pass
    dtype = weights_dtype(model)  # a bf16 copy (`in_precision`) takes bf16 images
    for x, y, skip in progress_bar(loader, disable=not ctx.progress, leave=False, desc=desc):
        sums[2] += skip
        x, y = normalize(x.to(dev), ctx.mean, ctx.std).to(dtype), y.to(dev)
        with autocast(dev, ctx.precision), packs:
            logits = model(x).float()
            if ctx.flip:
                logits = (logits + model(x.flip(-1)).float()) / 2
        keep = y >= 0  # padding entries of the last rank's shard carry label -1
        logits, y = logits[keep], y[keep]
        sums[0] += float(F.cross_entropy(logits, y, reduction="sum")) if len(y) else 0.0
        top = logits.topk(min(5, K), -1).indices
        sums[1] += float((top == y[:, None]).any(-1).sum())
        conf += torch.bincount((y * K + top[:, 0]).cpu(), minlength=K * K).double()
    conf, sums = ctx.reduce(conf.to(dev)).cpu(), ctx.reduce(sums.to(dev)).cpu()
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


# ------------------------------------------------------------------------------ the report
def report_dict(
    res: EvalResult, names: tuple[str, ...], split: str, model: str, flip: bool = False
) -> dict[str, Any]:
    """The JSON report of one evaluation (`flip`: with test-time flips)."""
    return {
        "split": split,
        "model": model,
        "flip": flip,
        "n": res.n,
        "top1": res.top1,
        "top5": res.top5,
        "loss": res.loss,
        "per_class": {n: float(a) for n, a in zip(names, res.per_class)},
        "confusion": res.confusion.tolist(),
        "skipped_eval": res.skipped,
    }


def write_report(out: Path, report: dict[str, Any], names: tuple[str, ...], title: str) -> Path:
    """`report.json` and `confusion.png` in `out`; returns the report's path."""
    path = write_text(Path(out) / "report.json", json.dumps(report, indent=2) + "\n")
    confusion = torch.tensor(report["confusion"])
    plot_confusion(confusion, names, Path(out) / "confusion.png", title)
    return path


def plot_confusion(confusion: torch.Tensor, names: tuple[str, ...], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (true class down, predicted across), counts annotated
    when there are at most 20 classes."""
    k = len(names)
    fig, (ax,) = new_figure(1, width=max(5.0, 0.5 * k + 2), height=max(4.0, 0.5 * k + 1.5))
    conf = confusion.double()
    rows = conf / conf.sum(1, keepdim=True).clamp(min=1)
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if k <= 20:
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        for i in range(k):
            for j in range(k):
                color = "white" if rows[i, j] > 0.5 else "black"
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=6, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path, tight=False)


def format_report(report: dict[str, Any]) -> str:
    """A few lines for the terminal: accuracy, the weakest classes, time and speed."""
    if report.get("split") is None:  # a run without validation or test images
        lines = [
            f"no validation or test images to evaluate on ({report['model']}); at the end of "
            f"training: loss {report['train_loss']:.4f}, accuracy {100 * report['train_acc']:.2f}%"
            f" on the {report['train_images']} training images (augmented, still learning)"
        ]
    else:
        lines = [
            f"{report['split']} top-1 {100 * report['top1']:.2f}%  top-5 "
            f"{100 * report['top5']:.2f}%  ({report['n']} images, {report['model']})"
        ]
    if report.get("flip"):
        lines[0] += "; each image averaged with its mirror (test-time flip)"
    if report.get("precision") == "bf16":
        lines[0] += "; in bf16"
    t = report.get("teacher")
    if t:
        lines.append(
            f"teacher     top-1 {100 * t['top1']:.2f}%  top-5 {100 * t['top5']:.2f}%  "
            f"({t['checkpoint']}, {t['distill']} distillation)"
        )
    per = sorted(report.get("per_class", {}).items(), key=lambda kv: kv[1])
    if per:
        weakest = ", ".join(f"{k} {100 * v:.1f}%" for k, v in per[:3])
        lines.append(f"weakest classes: {weakest}")
    if "train_minutes" in report:
        lines.append(
            f"training: {report['train_minutes']:.2f} min of steps, {report['img_s']:.0f} img/s, "
            f"{_count(report['epochs'], 'epoch')}, {_count(report['steps'], 'step')}"
        )
    skipped = report.get("skipped", 0) + report.get("skipped_eval", 0)
    if skipped:
        lines.append(f"skipped {skipped} unreadable image(s) (listed in the log above)")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ------------------------------------------------------------------------------ vitlab eval
def _missing_split(data: DataSplits, split: str) -> str:
    have = [s for s in ("train", "val", "test") if getattr(data, s) is not None]
    hint = f"it has {', '.join(have)}"
    if split == "val":
        hint += (
            "; to evaluate on the validation images a training run held out, pass the run's "
            "--val-split and --seed (its config.yaml has val_split and seed)"
        )
    return f"{data.name} has no {split} split: {hint}"


def _classes_of(model: nn.Module, data: DataSplits, name: str) -> DataSplits:
    """Only the model's classes of `data`, when they are some of its classes by name (a model
    trained with `classes=`, such as a transfer study's five Fashion-MNIST classes)."""
    names = model.cfg.class_names
    if not names or len(names) >= data.num_classes or not set(names) < set(data.class_names):
        return data
    log.info("%s knows %d of %s's %d classes (%s); evaluating on those", name, len(names),
             data.name, data.num_classes, ", ".join(names))  # fmt: skip
    return select_classes(data, names)


def _check_fit(model: nn.Module, data: DataSplits, name: str) -> None:
    """Refuse a class count that differs; say so when the classes or channels do not match."""
    cfg = model.cfg
    if cfg.num_classes != data.num_classes:
        raise ConfigError(
            f"{name} has {cfg.num_classes} classes but {data.name} has {data.num_classes}; "
            f"fine-tune it first (vitlab finetune --from {name})"
        )
    if cfg.class_names and tuple(cfg.class_names) != tuple(data.class_names):
        log.warning(
            "note: %s's classes (%s, ...) are not %s's (%s, ...); accuracy counts class i of "
            "the model as class i of the data",
            name, ", ".join(cfg.class_names[:3]), data.name, ", ".join(data.class_names[:3]),
        )  # fmt: skip
    if cfg.in_chans != data.in_chans:
        log.warning(
            "note: %s takes %d channel(s) and %s has %d: images are converted (%s)",
            name, cfg.in_chans, data.name, data.in_chans,
            "to greyscale" if cfg.in_chans == 1 else "grey copied to each channel",
        )  # fmt: skip


def eval_augmentation(model: nn.Module) -> AugConfig:
    """The model's own evaluation preprocessing (`vitlab.preprocess`) as a dataset applies it:
    its resolution, channels, crop and resize filter."""
    p = preprocess_of(model)
    return AugConfig(
        img_size=p.img_size, channels=p.in_chans, crop_pct=p.crop_pct, interpolation=p.interpolation
    )


def eval_data(
    model: nn.Module,
    data_spec: str,
    root: str | None = None,
    *,
    download: bool = False,
    name: str | None = None,
    val_split: float = 0.0,
    seed: int = 0,
) -> DataSplits:
    """`data_spec` as `vitlab eval` reads it for `model`: `val_split` and `seed` hold out the
    validation images a training run held out, and a model of some of the data's classes (by
    name) gets those classes only."""
    data = load_data(data_spec, root, download=download, val_split=val_split, seed=seed)
    return _classes_of(model, data, name or "the model")


def split_loader(
    model: nn.Module, data: DataSplits, split: str, batch_size: int = 256, name: str | None = None
) -> DataLoader:
    """A loader of `data`'s `split` in the model's own preprocessing, after refusing a split
    the data lacks or a class count that differs from the model's."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    images = getattr(data, split)
    if images is None:
        raise ConfigError(_missing_split(data, split))
    _check_fit(model, data, name or "the model")
    return build_loader(images, eval_augmentation(model), batch_size)[0]


def eval_context(model: nn.Module, data: DataSplits, device: torch.device) -> EvalContext:
    """What `evaluate` needs for `model` on `data`: its mean/std, the class count."""
    return EvalContext(device, tuple(model.cfg.mean), tuple(model.cfg.std), data.num_classes)


def evaluate_checkpoint(
    model: nn.Module,
    data_spec: str,
    root: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    out: Path | None = None,
    *,
    download: bool = False,
    device: str = "cpu",
    name: str | None = None,
    val_split: float = 0.0,
    seed: int = 0,
    flip: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """`vitlab eval`: a loaded model's top-1/top-5/per-class accuracy and confusion matrix on
    a split of `data_spec` (`val_split` and `seed` hold out the validation images a training
    run held out; `flip` averages each image's logits with its mirror's; `precision` fp32,
    bf16 or auto, `vitlab.runtime.precision.inference_precision`); with `out`, report.json and
    confusion.png there."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    dev = pick_device(device)
    precision = inference_precision(precision, dev)
    data = eval_data(model, data_spec, root, download=download, name=name, val_split=val_split,
                     seed=seed)  # fmt: skip
    loader = split_loader(model, data, split, batch_size, name)
    t0 = time.perf_counter()
    ctx = eval_context(model, data, dev)
    ctx.flip = flip
    res = evaluate(in_precision(model.to(dev), precision), loader, ctx, desc=split)
    report = report_dict(res, data.class_names, split, name or type(model).__name__, flip)
    report["precision"] = precision
    report["img_s"] = res.n / max(time.perf_counter() - t0, 1e-9)
    if out is not None:
        title = f"{data.name} {split}: top-1 {100 * res.top1:.2f}%"
        write_report(out, report, data.class_names, title)
    return report


# The file a training run writes beside its checkpoints with its whole config
# (`vitlab.train.state.RUN_FILES["config"]`).
RUN_CONFIG = "config.yaml"


def run_holdout(checkpoint: str | Path) -> tuple[float, int] | None:
    """The `(val_split, seed)` of the training run that wrote `checkpoint`, from the run's
    config.yaml beside it: the validation images that run held out. None without one."""
    import yaml

    path = Path(checkpoint).parent / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} is not a run's config (a mapping of TrainConfig keys)")
    try:
        return float(cfg.get("val_split") or 0.0), int(cfg.get("seed") or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: val_split and seed must be numbers") from None
