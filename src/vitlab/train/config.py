"""TrainConfig: every knob of a training run in one dataclass, read from a YAML preset, overridden
from the command line (`--set key=value`), and saved as `config.yaml` in every run directory.

Defaults follow the paper's pre-training recipe (Appendix B.1: Adam β1 0.9, β2 0.999, linear
warmup, cosine decay, global-norm clipping at 1); the presets in `configs/` tune them per task.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from vitlab.errors import ConfigError
from vitlab.fields import coerce_fields
from vitlab.weights.formats import runtime_graph

Optimizer = Literal["adamw", "sgd", "muon"]
Schedule = Literal["cosine", "linear", "constant"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]
Strategy = Literal["ddp", "fsdp"]
Objective = Literal["supervised", "mpp", "mae"]
Distill = Literal["hard", "soft"]
PatchInit = Literal["default", "whiten"]


@dataclass
class TrainConfig:
    """One training or fine-tuning run. Field names are the keys of the YAML presets and of
    `--set key=value`; `model_args` takes ViTConfig/ResNetConfig fields (`model_args.depth=4`)."""

    # what to train
    model: str = "vit_test"
    model_args: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # fine-tuning: any checkpoint vitlab.load_checkpoint reads
    # fine-tuning: regexes of parameter names left at their initial values instead of loaded
    # (big_vision's dont_load), e.g. ["pos_embed"] or ["head\\..*", "blocks\\.11\\..*"]
    dont_load: tuple[str, ...] = ()
    img_size: int | None = None  # None: the model's (or the checkpoint's) resolution
    # a new model's patch embedding: random (default), or the whitened principal directions of
    # the patches of patch_init_images training images (`vitlab.train.whiten`: the first-layer
    # start of the CIFAR-10 speedruns); freeze_patch_embed keeps it fixed while training
    patch_init: PatchInit = "default"
    patch_init_images: int = 2048
    freeze_patch_embed: bool = False
    # what the run learns: labels (supervised), or no labels (`vitlab pretrain`): the paper's
    # masked patch prediction (mpp, section 4.6) or a masked autoencoder (mae, He et al. 2022)
    objective: Objective = "supervised"
    mask_ratio: float | None = None  # patches corrupted (mpp) or dropped (mae); None: 0.5 / 0.75
    mpp_bits: int = 3  # mpp: bits per channel of the mean-colour target (3: 512 RGB classes)
    decoder_dim: int = 128  # mae: the decoder's width, depth and heads
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True  # mae: targets are each patch's pixels normalised per patch
    # distillation (DeiT, `vitlab.train.distill`): a teacher checkpoint (any vitlab reads, .onnx
    # too) whose outputs the student's distillation head (or its only head) learns: hard (its
    # arg-max) or soft (its softened distribution, temperature distill_tau); distill_alpha
    # weighs the teacher's term against the labels' (null: 0.5 hard, 0.1 soft)
    teacher: str | None = None
    distill: Distill = "hard"
    distill_alpha: float | None = None
    distill_tau: float = 3.0
    # data
    data: str = "synthetic"
    data_root: str | None = None
    download: bool = False
    val_split: float = 0.0  # fraction of train held out when the dataset has no val split
    # which images: only these classes (names or indices; relabelled 0..k-1 in this order), and
    # a class-balanced subset of the training images left after the validation hold-out
    classes: tuple[str | int, ...] | None = None
    train_images: int | None = None  # that many in all (as equal per class as they divide)
    train_per_class: int | None = None  # that many of each class (k-shot)
    workers: int = 0  # DataLoader worker processes (0: batches prepared in the main process)
    # augmentation and regularisation
    scale: float = 1.0  # smallest area fraction of random-resized crops (1: off)
    pad_crop: int = 0
    hflip: float = 0.0
    randaug_n: int = 2
    randaug_m: int = 0  # RandAugment magnitude (0: off)
    random_erase: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup (0: off)
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    # optimisation (per step)
    epochs: float = 1.0
    steps: int | None = None  # total optimiser steps; overrides epochs (the paper counts steps)
    # steps per epoch, the unit of validation, checkpoints and history rows (None: one pass
    # over the training images; more steps than a pass reshuffle the data within the epoch)
    epoch_steps: int | None = None
    batch_size: int = 64  # global batch (all processes, all accumulation steps)
    accum_steps: int = 1
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd
    muon_momentum: float = 0.95  # muon: Nesterov momentum of the hidden matrices' updates
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    clip_grad: float | None = 1.0
    ema_decay: float | None = None  # Polyak averaging (Table 2 uses 0.9999)
    # precision, speed, parallelism
    precision: Precision = "fp32"
    compile: bool = False
    strategy: Strategy = "ddp"
    device: str = "auto"
    threads: int | None = None  # CPU threads per process (None: torch's default)
    # bookkeeping
    seed: int = 0
    deterministic: bool = False
    out: str = "runs/train"
    ckpt_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends)
    eval_every: int = 1  # epochs between validation passes
    # also evaluate the test split at every validation pass, under test_* keys of the history
    # (learning curves on test, as `benchmarks/time_to_accuracy.py` draws them); it never
    # chooses anything (not the best checkpoint, not the early stop)
    watch_test: bool = False
    # the final report evaluates best.safetensors (best validation accuracy: early stopping, the
    # paper's protocol for Figure 4) instead of the last weights
    report_best: bool = False
    # validation and the final report average each image's logits with its mirror's (test-time
    # flips; for data whose labels survive a mirror, such as Fashion-MNIST's)
    eval_flip: bool = False
    # early stopping: stop after this many validation passes in a row without a better
    # validation accuracy (None: off); `steps`/`epochs` are then the cap. Needs a validation split.
    patience: int | None = None
    # with patience: when validation stalls, decay the learning rate linearly to min_lr over
    # this fraction of the steps trained so far (at least one validation pass), then stop
    # (warmup-stable-decay; an early stop at a high rate leaves the model unannealed). 0: stop
    cooldown: float = 0.0
    log_every: int = 10

    def __post_init__(self) -> None:
        coerce_fields(self)
        graph = runtime_graph(self.init_from)
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.accum_steps >= 1, "accum_steps must be >= 1"),
            (
                self.batch_size % self.accum_steps == 0,
                f"batch_size {self.batch_size} must divide by accum_steps {self.accum_steps} "
                f"(set --set accum_steps=N to a divisor)",
            ),
            (self.epochs > 0 or (self.steps or 0) > 0, "epochs (or steps) must be > 0"),
            (self.epochs >= 0, "epochs must be >= 0 (steps, when given, override them)"),
            (self.lr > 0, "lr must be > 0"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (0.0 < self.scale <= 1.0, "scale must be in (0, 1]"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must be in (0, 1)"),
            (0.0 <= self.val_split < 1.0, "val_split must be in [0, 1)"),
            (self.steps is None or self.steps >= 1, "steps must be >= 1 (or null: use epochs)"),
            (self.img_size is None or self.img_size >= 1, "img_size must be >= 1"),
            (self.epoch_steps is None or self.epoch_steps >= 1, "epoch_steps must be >= 1"),
            (self.train_images is None or self.train_images >= 1, "train_images must be >= 1"),
            (
                self.train_per_class is None or self.train_per_class >= 1,
                "train_per_class must be >= 1",
            ),
            (
                self.train_images is None or self.train_per_class is None,
                "train_images and train_per_class both choose the subset: set one of them",
            ),
            (self.classes is None or len(self.classes) >= 2, "classes must name at least 2"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.patch_init_images >= 1, "patch_init_images must be >= 1"),
            (
                self.patch_init == "default" or not self.init_from,
                "patch_init=whiten starts a new model's patch embedding, and init_from loads a "
                "trained one: drop one of them",
            ),
            (self.pad_crop >= 0, "pad_crop must be >= 0 (pixels)"),
            (0.0 <= self.hflip <= 1.0, "hflip must be in [0, 1] (a probability)"),
            (0.0 <= self.random_erase <= 1.0, "random_erase must be in [0, 1] (a probability)"),
            (self.randaug_n >= 0, "randaug_n must be >= 0"),
            (0 <= self.randaug_m <= 30, "randaug_m must be in [0, 30] (0: off)"),
            (self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix must be >= 0 (0: off)"),
            (0.0 <= self.min_lr <= self.lr, "min_lr must be in [0, lr]"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (all(0.0 <= b < 1.0 for b in self.betas), "betas must each be in [0, 1)"),
            (0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)"),
            (0.0 <= self.muon_momentum < 1.0, "muon_momentum must be in [0, 1)"),
            (self.warmup_steps >= 0 and self.warmup_epochs >= 0, "warmup must be >= 0"),
            (self.clip_grad is None or self.clip_grad > 0, "clip_grad must be > 0 (or null: off)"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1 (or null)"),
            (self.ckpt_every >= 0, "ckpt_every must be >= 0 (0: at epoch ends only)"),
            (self.eval_every >= 1, "eval_every must be >= 1 (the last epoch is always evaluated)"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.patience is None or self.patience >= 1, "patience must be >= 1 (or null: off)"),
            (0.0 <= self.cooldown <= 1.0, "cooldown must be in [0, 1] (0: stop at once)"),
            (
                not self.cooldown or bool(self.patience),
                "cooldown decays the learning rate once validation stalls: it needs patience",
            ),
            (
                self.mask_ratio is None or 0.0 < self.mask_ratio < 1.0,
                "mask_ratio must be in (0, 1) (or null: the objective's default)",
            ),
            (1 <= self.mpp_bits <= 8, "mpp_bits must be in [1, 8]"),
            (
                self.distill_alpha is None or 0.0 <= self.distill_alpha <= 1.0,
                "distill_alpha must be in [0, 1] (or null: 0.5 hard, 0.1 soft)",
            ),
            (self.distill_tau > 0, "distill_tau must be > 0"),
            (
                not self.teacher or self.objective == "supervised",
                f"a teacher teaches a classifier; objective={self.objective} learns without "
                "labels: drop teacher (distil when fine-tuning the pre-trained model)",
            ),
            (self.decoder_dim % 4 == 0, "decoder_dim must be a multiple of 4 (sin-cos positions)"),
            (
                self.decoder_dim >= 1 and self.decoder_depth >= 1 and self.decoder_heads >= 1,
                "decoder_dim, decoder_depth and decoder_heads must be >= 1",
            ),
            (
                self.decoder_dim % self.decoder_heads == 0,
                f"decoder_dim {self.decoder_dim} must divide by decoder_heads {self.decoder_heads}",
            ),
            (
                graph is None,
                f"init_from {self.init_from} is an {graph and graph.label} graph, which cannot be "
                "trained: "
                "fine-tune from the PyTorch checkpoint it was exported from",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message} (check the preset or --set)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass(frozen=True)
class Flag:
    """How a TrainConfig field is offered on the command line (`--batch-size` sets batch_size):
    its help text, metavar, and for a folder whether it is read or written. The type and the
    choices come from the field's annotation; the value is checked by TrainConfig only."""

    help: str
    metavar: str | None = None
    folder: Literal["read", "write"] | None = None


# The fields `vitlab train` and `vitlab finetune` offer as flags, in the order `--help` lists
# them; the data group (data, data_root, download) is shared with other commands
# (`vitlab.cli.common.add_data_args`), and every field can be set with --set KEY=VALUE.
FLAGS: dict[str, Flag] = {
    "model": Flag("model variant (`vitlab models` lists them)"),
    "epochs": Flag("training epochs"),
    "steps": Flag("optimiser steps (overrides --epochs)"),
    "batch_size": Flag("global batch size (all processes)"),
    "lr": Flag("peak learning rate"),
    "img_size": Flag("input resolution (default: the model's)"),
    "precision": Flag(
        "bf16 autocast; fp16 needs a GPU; auto: bf16 where it is measured faster here"
    ),
    "compile": Flag("torch.compile the model"),
    "workers": Flag("data-loading processes (0: in the main one)"),
    "strategy": Flag("multi-process strategy under torchrun"),
    "patience": Flag("stop after N validation passes without a better accuracy (early stopping)"),
    "seed": Flag("random seed"),
    "out": Flag("run directory", "RUN_DIR", folder="write"),
}
# The fields `vitlab train` and `vitlab finetune` offer besides those: distillation (DeiT).
DISTILL_FLAGS: dict[str, Flag] = {
    "teacher": Flag("distil from this checkpoint (any vitlab reads, .onnx too)", "CHECKPOINT"),
    "distill": Flag("with --teacher: learn its arg-max (hard, DeiT's) or its distribution (soft)"),
}
# The fields `vitlab pretrain` offers besides those (the objective and how much it masks).
PRETRAIN_FLAGS: dict[str, Flag] = {
    "mask_ratio": Flag("fraction of patches corrupted (mpp; default 0.5) or dropped (mae; 0.75)"),
}
DATA_FIELDS = ("data", "data_root", "download")  # what the shared data group sets


# ------------------------------------------------------------------------ presets and overrides
def configs_dir() -> Path:
    """The YAML presets: $VITLAB_CONFIGS, else the ones installed with vitlab as package data
    (`vitlab/configs/`, with the study presets in `vitlab/configs/studies/`)."""
    env = os.environ.get("VITLAB_CONFIGS")
    return Path(env) if env else _packaged_configs()


def _packaged_configs() -> Path:
    """`vitlab/configs/` through importlib.resources: the folder beside the installed sources."""
    from importlib.resources import files

    presets = files("vitlab") / "configs"
    if not isinstance(presets, Path):  # e.g. vitlab imported from a zip file
        raise ConfigError(
            "vitlab's presets are not in a folder on disk here; "
            "set VITLAB_CONFIGS to a copy of vitlab/configs/"
        )
    return presets


def list_presets() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # here, not at the top: `vitlab --help` lists the presets without reading them

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # its message spans lines and draws a caret under the place
        raise ConfigError(f"{path} is not valid YAML ({_yaml_problem(e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of TrainConfig keys")
    return data


def _yaml_problem(e: Exception) -> str:
    """PyYAML's problem and where, on one line: "line 1, column 5: expected ',' or ']'"."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def preset_path(name: str) -> Path:
    """A preset name (`fashion_mnist_vit`) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = configs_dir() / f"{name}.yaml"
    if path.is_file():
        return path
    raise ConfigError(
        f"no preset or YAML file named {name!r}; presets: {', '.join(list_presets()) or 'none'}"
    )


def accumulation_for(batch: int, micro: int) -> int:
    """The number of accumulated micro-batches that splits `batch` evenly into pieces of at
    most `micro` images (the fewest such)."""
    return next(a for a in range(max(1, math.ceil(batch / max(micro, 1))), batch + 1)
                if batch % a == 0)  # fmt: skip


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """A preset (name or YAML path) with `overrides` applied; unknown keys are an error."""
    data = read_yaml(preset_path(preset)) if preset else {}
    data = merge(data, overrides or {})
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(k, names, n=1) for k in unknown]
        said = ", ".join(
            f"{k}" + (f" (did you mean {h[0]}?)" if h else "") for k, h in zip(unknown, hints)
        )
        raise ConfigError(f"unknown config key(s): {said}; `vitlab train --help` lists every key")
    return TrainConfig(**data)


def save_config(cfg: TrainConfig, path: Path) -> None:
    import yaml

    from vitlab.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: Path) -> TrainConfig:
    return TrainConfig(**read_yaml(path))
