"""vitlab's own checkpoint format and the one entry point that loads every format.

A native checkpoint is a single `.safetensors` file whose metadata holds the model config (as
JSON, class names included), so `load_checkpoint(path)` rebuilds the model from the file alone.
Other ecosystems plug in as `Source`s: a detector, an architecture reader, and a key map.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

import vitlab
from vitlab.errors import CheckpointError, ConfigError
from vitlab.models.config import AnyConfig, ViTConfig, config_from_dict, config_to_json, replace
from vitlab.models.registry import build_model, get_config
from vitlab.weights import posemb
from vitlab.weights.io import RawCheckpoint, read_raw, save_safetensors

log = logging.getLogger("vitlab")

SourceName = Literal["auto", "vitlab", "timm", "google", "hf", "torchvision"]
FORMAT_KEY = "format"
FORMAT_VALUE = "vitlab"


@dataclass(frozen=True)
class Source:
    """One ecosystem's weight layout, in both directions."""

    name: str
    description: str
    detect: Callable[[RawCheckpoint], bool]
    infer_config: Callable[[RawCheckpoint], AnyConfig]
    to_vitlab: Callable[[RawCheckpoint, AnyConfig], dict[str, torch.Tensor]]
    export: Callable[[nn.Module, Path], Path] | None = None


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    SOURCES[source.name] = source
    return source


# ------------------------------------------------------------------------- declarative key maps
def _same(*ts: torch.Tensor) -> torch.Tensor:
    return ts[0]


def _as_list(t: torch.Tensor) -> list[torch.Tensor]:
    return [t]


@dataclass(frozen=True)
class Rule:
    """One vitlab tensor and the tensor(s) it is in another layout, with the named transforms
    between them (`to_ours(*theirs)` and `to_theirs(ours) -> list`, e.g. fuse/split qkv)."""

    ours: str
    theirs: tuple[str, ...]
    to_ours: Callable[..., torch.Tensor] = _same
    to_theirs: Callable[[torch.Tensor], list[torch.Tensor]] = _as_list
    optional: bool = False  # e.g. a head: absent in headless files


def rule(
    ours: str,
    theirs: str | tuple[str, ...],
    to_ours: Callable[..., torch.Tensor] = _same,
    to_theirs: Callable[[torch.Tensor], list[torch.Tensor]] = _as_list,
    optional: bool = False,
) -> Rule:
    names = (theirs,) if isinstance(theirs, str) else tuple(theirs)
    return Rule(ours, names, to_ours, to_theirs, optional)


def apply_rules(rules: list[Rule], theirs: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    """Their tensors -> vitlab's; keys a rule needs but the file lacks, and keys of the file no
    rule takes, are reported together as one CheckpointError."""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for r in rules:
        absent = [k for k in r.theirs if k not in theirs]
        if absent:
            if not (r.optional and len(absent) == len(r.theirs)):
                missing += absent
            continue
        out[r.ours] = r.to_ours(*[_tensor(theirs[k]) for k in r.theirs])
        used.update(r.theirs)
    unused = sorted(set(theirs) - used)
    if missing or unused:
        raise CheckpointError(
            f"{what}: the tensors do not fit the architecture read from them ("
            + "; ".join(
                f"{label}: {_short(items)}"
                for label, items in (("missing", missing), ("not understood", unused))
                if items
            )
            + "). Pass source=... or model=... if the layout was misdetected."
        )
    return out


def invert_rules(rules: list[Rule], ours: dict[str, torch.Tensor], what: str) -> dict[str, Any]:
    """vitlab's tensors -> another layout's; a vitlab tensor no rule exports is an error."""
    out: dict[str, Any] = {}
    for r in rules:
        if r.ours in ours:
            out.update(zip(r.theirs, r.to_theirs(ours[r.ours].detach().cpu())))
    left = sorted(set(ours) - {r.ours for r in rules})
    if left:
        raise CheckpointError(f"{what} has no place for: {_short(left)}")
    return out


def _tensor(v: Any) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP/FSDP wrappers and `torch.compile`."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


# ------------------------------------------------------------------------------ native format
def _detect_vitlab(raw: RawCheckpoint) -> bool:
    return raw.metadata.get(FORMAT_KEY) == FORMAT_VALUE


def _infer_vitlab(raw: RawCheckpoint) -> AnyConfig:
    try:
        return config_from_dict(json.loads(raw.metadata["config"]))
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{raw.path}: vitlab metadata is damaged ({e})") from None


def _export_vitlab(model: nn.Module, path: Path) -> Path:
    model = unwrap_model(model)
    metadata = {
        FORMAT_KEY: FORMAT_VALUE,
        "vitlab_version": vitlab.__version__,
        "config": config_to_json(model.cfg),
    }
    return save_safetensors(model.state_dict(), path, metadata)


register_source(
    Source(
        name="vitlab",
        description="vitlab .safetensors (config in the metadata)",
        detect=_detect_vitlab,
        infer_config=_infer_vitlab,
        to_vitlab=lambda raw, cfg: dict(raw.tensors),
        export=_export_vitlab,
    )
)


# ---------------------------------------------------------------------------------- loading
def detect_source(raw: RawCheckpoint) -> Source:
    for source in SOURCES.values():
        if source.detect(raw):
            return source
    sample = ", ".join(sorted(raw.keys())[:6])
    expected = "; ".join(f"{s.name}: {s.description}" for s in SOURCES.values())
    raise CheckpointError(
        f"{raw.path}: unknown weight layout (first keys: {sample}). Expected one of: {expected}. "
        "Pass source=... if you know which it is."
    )


def _get_source(name: str) -> Source:
    _import_adapters()
    if name not in SOURCES:
        raise ConfigError(f"unknown source {name!r}; choose from auto, {', '.join(SOURCES)}")
    return SOURCES[name]


def _import_adapters() -> None:
    """Adapters register themselves on import."""
    from vitlab.weights import google, hf, timm, torchvision  # noqa: F401


# Fields a file determines unless the caller overrides them.
_FILE_FIELDS = ("num_classes", "class_names", "img_size")


def _resolve_config(
    inferred: AnyConfig, model: str | AnyConfig | None, overrides: dict
) -> AnyConfig:
    if model is None:
        base, from_file = inferred, {}
    else:
        base = get_config(model) if isinstance(model, str) else model
        from_file = {k: getattr(inferred, k) for k in _FILE_FIELDS if hasattr(base, k)}
    return replace(base, **{**from_file, **overrides})


def load_checkpoint(
    path: str | Path,
    model: str | AnyConfig | nn.Module | None = None,
    *,
    source: SourceName = "auto",
    strict: bool = True,
    resample: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """Load weights from any supported file and return a ready model (in eval mode).

    `path` may also be a hub reference, "hf-hub:ORG/NAME" or "timm:MODEL.TAG", downloaded (or
    found in the local cache) by huggingface_hub. `model` may be None (the architecture is read
    from the file), a variant name, a config, or a built module to load into. `overrides` are
    config fields; changing `num_classes` drops the file's head for a new zero-initialised one
    (fine-tuning, paper section 3.2), and changing `img_size` resamples the position embeddings
    the way the source library does (`resample` picks another method of weights.posemb.METHODS).
    """
    from vitlab.weights.hub import is_hub_reference, resolve_reference

    if is_hub_reference(path):
        path = resolve_reference(str(path))
    raw = read_raw(path)
    src = detect_source_auto(raw) if source == "auto" else _get_source(source)
    if isinstance(model, nn.Module):
        target, cfg = unwrap_model(model), unwrap_model(model).cfg
    else:
        cfg = _resolve_config(src.infer_config(raw), model, overrides)
        target = build_model(cfg)
    sd = src.to_vitlab(raw, cfg)
    new_head = "num_classes" in overrides and _head_shape(sd) not in (None, cfg.num_classes)
    if new_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    method = posemb.method_for(src.name, resample)
    load_into(target, sd, strict=strict, skip=("head.",) if new_head else (), resample=method)
    if new_head:
        target.reset_classifier(cfg.num_classes, cfg.class_names)
    target.cfg.extra.update(source=src.name, loaded_from=str(path))
    log.info("loaded %s weights from %s", src.name, path)
    return target.eval()


def detect_source_auto(raw: RawCheckpoint) -> Source:
    _import_adapters()
    src = detect_source(raw)
    log.info("%s: detected %s", raw.path, src.description)
    return src


def _head_shape(sd: dict[str, torch.Tensor]) -> int | None:
    w = sd.get("head.weight", sd.get("head.fc.weight"))  # ViT / ResNetV2 (1x1 conv)
    return None if w is None else int(w.shape[0])


def load_into(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    *,
    strict: bool = True,
    skip: tuple[str, ...] = (),
    resample: str | posemb.Resampling | None = None,
) -> None:
    """Copy `sd` into `model`, resampling position embeddings to the model's grid (with
    `resample`, bicubic by default); any key that is missing, unexpected or misshapen is
    reported, all at once, as a CheckpointError."""
    own = model.state_dict()
    sd = dict(sd)
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        sd["pos_embed"] = fit_pos_embed(sd["pos_embed"], model.cfg, resample or "bicubic")
    missing = [k for k in own if k not in sd and not k.startswith(skip)]
    unexpected = [k for k in sd if k not in own]
    misshapen = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sd
        if k in own and sd[k].shape != own[k].shape
    ]
    if misshapen or (strict and (missing or unexpected)):
        name = type(model).__name__
        raise CheckpointError(
            f"the weights do not fit this {name}: "
            + "; ".join(
                f"{label}: {_short(items)}"
                for label, items in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("misshapen", misshapen),
                )
                if items
            )
            + ". Check the model name and overrides (or pass source=... for another layout)."
        )
    with torch.no_grad():
        for k, v in sd.items():
            if k in own:
                own[k].copy_(v.to(own[k].dtype))


def _short(items: list[str], n: int = 8) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def fit_pos_embed(
    pos: torch.Tensor, cfg: ViTConfig, method: str | posemb.Resampling = "bicubic"
) -> torch.Tensor:
    """Resample stored position embeddings to `cfg`'s patch grid (weights.posemb's methods)."""
    prefix = cfg.num_prefix_tokens if cfg.pos_embed_cls else 0
    grid = cfg.grid_size()
    n_old = pos.shape[1] - prefix
    if n_old <= 0:
        raise CheckpointError(f"position embeddings of shape {tuple(pos.shape)} hold no patches")
    log.info("resampling position embeddings from %d to %dx%d patches", n_old, *grid)
    return posemb.resample(pos, grid, prefix, method)


# ----------------------------------------------------------------------------------- saving
def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    format: Literal["vitlab", "timm", "hf", "google", "torchvision"] = "vitlab",
    class_names: list[str] | tuple[str, ...] | None = None,
) -> Path:
    """Write `model` to `path`: a self-describing vitlab `.safetensors` by default, or the
    layout of another ecosystem. The write is atomic (a temporary file, then a rename)."""
    model = unwrap_model(model)
    if not hasattr(model, "cfg"):
        raise ConfigError("save_checkpoint takes a vitlab model (one with a .cfg)")
    if class_names is not None:
        model.cfg = replace(model.cfg, class_names=tuple(class_names))
    src = _get_source(format)
    if src.export is None:
        raise ConfigError(f"exporting to {format!r} is not supported")
    return src.export(model, Path(path))
