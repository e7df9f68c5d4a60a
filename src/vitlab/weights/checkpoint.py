"""vitlab's own checkpoint format, the source registry, and the entry points that load and save
every format.

A native checkpoint is a single `.safetensors` file whose metadata holds the model config (as
JSON, class names included), so `load_checkpoint(path)` rebuilds the model from the file alone.
Other ecosystems are `Source`s (`vitlab.weights.adapter`), listed in `SOURCES` in the order of
`vitlab.weights.formats.SOURCE_NAMES`; `source="auto"` asks each detector and refuses a file that
two of them claim.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vitlab._version import __version__
from vitlab.errors import CheckpointError, ConfigError
from vitlab.files import write_text
from vitlab.models.config import AnyConfig, ViTConfig, config_from_dict, config_to_json, replace
from vitlab.models.registry import build_model, get_config
from vitlab.runtime.device import unwrap_model
from vitlab.weights import formats, google, hf, hub, posemb, timm, torchvision
from vitlab.weights.adapter import (
    FORMAT_KEY,
    FORMAT_VALUE,
    GUESSED,
    UNKNOWN,
    Source,
    drop_parts,
    listing,
    written_by_vitlab,
)
from vitlab.weights.formats import AUTO, SOURCE_NAMES, SourceName
from vitlab.weights.io import RawCheckpoint, read_raw, save_safetensors

log = logging.getLogger("vitlab")


# ------------------------------------------------------------------------------ native format
def _infer_vitlab(raw: RawCheckpoint) -> AnyConfig:
    try:
        return config_from_dict(json.loads(raw.metadata["config"]))
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{raw.path}: vitlab metadata is damaged ({e})") from None


# What a pre-training run (`vitlab pretrain`) keeps in its checkpoint beside the encoder, by
# key prefix, so that the file can also resume pre-training: loading drops them, and says so.
PRETRAINING_PARTS = {"mae.": "the MAE decoder", "mpp.": "the masked-patch-prediction head"}


def _native_tensors(raw: RawCheckpoint, cfg: AnyConfig) -> dict[str, torch.Tensor]:
    """The file's model tensors, without a pre-training run's own (`PRETRAINING_PARTS`)."""
    return drop_parts(raw, PRETRAINING_PARTS)


def _export_vitlab(
    model: nn.Module, path: Path, extra: dict[str, torch.Tensor] | None = None
) -> Path:
    metadata = {
        FORMAT_KEY: FORMAT_VALUE,
        "vitlab_version": __version__,
        "config": config_to_json(model.cfg),
    }
    return save_safetensors({**model.state_dict(), **(extra or {})}, path, metadata)


NATIVE = Source(
    name="vitlab",
    description="vitlab .safetensors (config in the metadata)",
    detect=written_by_vitlab,
    infer_config=_infer_vitlab,
    to_vitlab=_native_tensors,
    export=_export_vitlab,
)

# The registry: every layout vitlab reads and writes, in detection order.
SOURCES: dict[str, Source] = {
    s.name: s for s in (NATIVE, timm.SOURCE, google.SOURCE, hf.SOURCE, torchvision.SOURCE)
}
if tuple(SOURCES) != SOURCE_NAMES:  # formats.py lists the same names for the command line
    raise RuntimeError(f"weights.formats.SOURCE_NAMES {SOURCE_NAMES} != registry {tuple(SOURCES)}")


# ---------------------------------------------------------------------------------- detection
def detect_source(raw: RawCheckpoint) -> Source:
    """The one source whose detector claims `raw`; an error naming the candidates when none
    or several do."""
    claims = [s for s in SOURCES.values() if s.detect(raw)]
    if len(claims) == 1:
        return claims[0]
    if claims:
        names = " and ".join(s.name for s in claims)
        raise CheckpointError(
            f"{raw.path} fits the layouts of {names}; pass source=... (--from / --source) "
            "to say which it is"
        )
    sample = ", ".join(sorted(raw.keys())[:6])
    expected = "; ".join(f"{s.name}: {s.description}" for s in SOURCES.values())
    raise CheckpointError(
        f"{raw.path}: unknown weight layout (first keys: {sample}). Expected one of: {expected}. "
        "Pass source=... if you know which it is."
    )


def get_source(name: str) -> Source:
    """The registered source called `name`, or a one-line error listing them."""
    if name not in SOURCES:
        raise ConfigError(f"unknown source {name!r}; choose from {AUTO}, {', '.join(SOURCES)}")
    return SOURCES[name]


# ---------------------------------------------------------------------------------- loading
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
    source: SourceName | Literal["auto"] = "auto",
    strict: bool = True,
    resample: str | None = None,
    dont_load: Sequence[str] = (),
    **overrides: Any,
) -> nn.Module:
    """Load weights from any supported file and return a ready model (in eval mode).

    `path` may also be a hub reference, "hf-hub:ORG/NAME" or "timm:MODEL.TAG", downloaded (or
    found in the local cache) by huggingface_hub. `model` may be None (the architecture is read
    from the file), a variant name, a config, or a built module to load into (no overrides
    then: build the module with them). `overrides` are config fields; changing `num_classes`
    drops the file's head for a new zero-initialised one (fine-tuning, paper section 3.2), and
    changing `img_size` resamples the position embeddings the way the source library does
    (`resample` picks another method of weights.posemb.METHODS). `dont_load` holds regexes of
    vitlab parameter names (matched whole, e.g. `r"head\\..*"`, `"pos_embed"`) that keep the
    model's initial values instead of the file's, as big_vision's `dont_load`.

    A runtime graph vitlab exported (`weights.formats.GRAPHS`: a `.onnx` file comes back as a
    `vitlab.weights.onnx.OnnxModel`, run by ONNX Runtime) classifies like the model it was
    exported from, and cannot be changed.
    """
    graph = formats.runtime_graph(path)
    if graph is not None:
        _graph_as_is(graph, path, model, source, dont_load, resample)
        return graph.loader()(path, **overrides)
    if hub.is_hub_reference(path):
        path = hub.resolve_reference(str(path))
    raw = read_raw(path)
    src = detect_source(raw) if source == AUTO else get_source(source)
    target, cfg = _target(src, raw, model, overrides)
    sd = src.to_vitlab(raw, cfg)
    # a new head: another class count, or a head where the file has none (an encoder
    # pre-trained without labels, or a timm/HF MAE encoder)
    new_head = "num_classes" in overrides and (_head_shape(sd) or 0) != cfg.num_classes
    skip = _skipped_keys(sd, dont_load, new_head)
    method = posemb.method_for(src.resample, resample)
    fresh = ("head.", "head_dist.") if new_head else ()  # left to reset_classifier
    load_into(target, {k: v for k, v in sd.items() if k not in skip}, strict=strict,
              skip=(*skip, *fresh), resample=method)  # fmt: skip
    if new_head:
        target.reset_classifier(cfg.num_classes, cfg.class_names)
    target.cfg.extra.update(source=src.name, loaded_from=str(path))
    how = "detected" if source == AUTO else "as asked"
    log.info("loaded %s: %s (%s)", path, src.description.split(" (")[0], how)
    return target.eval()


def _graph_as_is(
    graph: formats.GraphFormat,
    path: Any,
    model: Any,
    source: str,
    dont_load: Sequence[str],
    resample: Any,
) -> None:
    """Refuse loading options that a runtime graph cannot take."""
    asked = [name for name, given in (("model", model is not None),
             ("source", source not in (AUTO, graph.name)), ("dont_load", bool(dont_load)),
             ("resample", resample is not None)) if given]  # fmt: skip
    if asked:
        raise ConfigError(
            f"{path} is an {graph.label} graph, loaded as it was exported: {', '.join(asked)} "
            "cannot apply; load the PyTorch checkpoint it came from instead"
        )


def _target(
    src: Source, raw: RawCheckpoint, model: Any, overrides: dict[str, Any]
) -> tuple[nn.Module, AnyConfig]:
    """The module to load into, and its config."""
    if isinstance(model, nn.Module):
        if overrides:
            raise ConfigError(
                f"load_checkpoint into an existing {type(unwrap_model(model)).__name__} cannot "
                f"apply {', '.join(sorted(overrides))}; build the model with them "
                "(create_model(name, ...)) or pass a variant name or config instead"
            )
        target = unwrap_model(model)
        return target, target.cfg
    inferred = src.infer_config(raw)
    if model is None:
        _say_guesses(inferred, overrides, raw.path)
    cfg = _resolve_config(inferred, model, overrides)
    return build_model(cfg), cfg


def _say_guesses(inferred: AnyConfig, overrides: dict[str, Any], path: Path) -> None:
    """Log each value the file did not store and the reader filled in; refuse one it could
    not tell, unless the caller gave it."""
    guessed = inferred.extra.pop(GUESSED, {})
    for name, origin in guessed.items():
        if name in overrides:
            continue
        if origin == UNKNOWN:
            raise ConfigError(
                f"{path} does not store {name}, and no registered variant has its shape "
                f"(width {inferred.embed_dim}, depth {inferred.depth}, MLP {inferred.mlp_dim}): "
                f"pass {name}=N (on the command line: --set {name}=N)"
            )
        log.warning(
            "%s does not store %s: took %s from %s; pass %s=N (--set %s=N) if it differs",
            path, name, getattr(inferred, name), origin, name, name,
        )  # fmt: skip


def _skipped_keys(sd: dict[str, torch.Tensor], dont_load: Sequence[str], new_head: bool) -> set:
    """The file's keys left at the model's initial values: `dont_load` matches (each pattern
    must match something, or it is a typo), and the old head when a new one replaces it."""
    skip = {k for k in sd if new_head and k.startswith(("head.", "head_dist."))}
    for pattern in dont_load:
        try:
            hits = {k for k in sd if re.fullmatch(pattern, k)}
        except re.error as e:
            raise ConfigError(f"dont_load pattern {pattern!r} is not a regex ({e})") from None
        if not hits:
            raise ConfigError(
                f"dont_load pattern {pattern!r} matches no parameter of the file (some are: "
                f"{', '.join(sorted(sd)[:4])}); patterns match whole vitlab names"
            )
        skip |= hits
    return skip


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
    `resample`, bicubic by default); any key that is missing (other than those starting with a
    `skip` prefix), unexpected or misshapen is reported, all at once, as a CheckpointError."""
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
        raise CheckpointError(
            f"the weights do not fit this {type(model).__name__}: "
            + listing(("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
            + ". Check the model name and overrides (or pass source=... for another layout)."
        )
    with torch.no_grad():
        for k, v in sd.items():
            if k in own:
                own[k].copy_(v.to(own[k].dtype))


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


# ------------------------------------------------------------------------------ provenance
# The `cfg.extra` key (saved in every vitlab checkpoint's config) under which a fine-tuning run
# records the sha256 of the weights it started from; `vitlab soup` averages only checkpoints
# that share it (Wortsman et al. 2022: the fine-tunes of one initialisation lie in one basin).
INIT_HASH = "init_sha256"


def weights_sha256(model: nn.Module, skip: tuple[str, ...] = ("head.", "head_dist.")) -> str:
    """sha256 over the model's tensors (name, dtype, shape and bytes) in sorted key order,
    leaving out the keys starting with `skip` (the classifier heads, new in a fine-tune)."""
    digest = hashlib.sha256()
    sd = unwrap_model(model).state_dict()
    for key in sorted(k for k in sd if not k.startswith(skip)):
        t = sd[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # (numel * itemsize,)
    return digest.hexdigest()


def record_init(model: nn.Module) -> str:
    """Note the hash of `model`'s current (starting) weights in its config, which every
    checkpoint of the run then carries; returns it."""
    model = unwrap_model(model)
    value = weights_sha256(model)
    model.cfg.extra = {**model.cfg.extra, INIT_HASH: value}
    return value


# ----------------------------------------------------------------------------------- saving
def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    format: SourceName | Literal["onnx"] = "vitlab",
    class_names: Sequence[str] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` to `path`: a self-describing vitlab `.safetensors` by default, the layout
    of another ecosystem, or (`format="onnx"`) an ONNX graph checked against the model
    (`vitlab.weights.onnx.export_onnx` has the options). `class_names` are written instead of
    the model's own (the model itself is left as it is). `extra` tensors (vitlab format only)
    are stored beside the model's, such as a pre-training run's decoder under `mae.*`
    (`PRETRAINING_PARTS`). The write is atomic (a temporary file, then a rename)."""
    model = unwrap_model(model)
    if not hasattr(model, "cfg"):
        raise ConfigError("save_checkpoint takes a vitlab model (one with a .cfg)")
    if class_names is not None:
        model = copy.copy(model)  # shares the parameters; only the copy's cfg changes
        model.cfg = replace(model.cfg, class_names=tuple(class_names))
    graph = formats.graph_format(format)
    if graph is not None:
        return graph.saver()(model, path).path
    src = get_source(format)
    if src.export is None:
        raise ConfigError(f"exporting to {format!r} is not supported")
    check_target(src, Path(path))
    if extra:
        if src is not NATIVE:
            raise ConfigError(f"extra tensors are kept in vitlab checkpoints only, not {format}")
        return _export_vitlab(model, Path(path), extra)
    return src.export(model, Path(path))


def check_target(src: Source, path: Path) -> None:
    """Refuse, before anything is written, a path that is not what `src` writes: a file name
    whose extension says another format (which vitlab itself could not read back), a folder
    where a file goes, a folder export into a folder holding other files, or a path through a
    file."""
    on_the_way = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if on_the_way is not None:
        raise ConfigError(f"cannot write {path}: {on_the_way} is a file, not a folder")
    if src.folder:
        if path.is_file():
            raise ConfigError(
                f"{path} is a file; the {src.name} layout is a folder: give a new one"
            )
        held = [p.name for p in path.iterdir()] if path.is_dir() else []
        others = sorted(name for name in held if name not in src.folder)
        if others:
            raise ConfigError(
                f"{path} holds other files ({', '.join(others[:3])}); write the {src.name} "
                "folder into an empty or new folder"
            )
        return
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; the {src.name} layout is one file: give its name")
    if path.suffix.lower() not in src.suffixes:
        raise ConfigError(
            f"{path}: the {src.name} layout is written as {' or '.join(src.suffixes)}; name the "
            f"file {path.stem}{src.suffixes[0]}"
        )


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write `model` as a Hugging Face Hub repository folder: vitlab's self-describing
    model.safetensors, its config as config.json and a model card (README.md) that lists it
    under the vitlab library. `load_checkpoint(directory)` reads it back, and so does
    `load_checkpoint("hf-hub:ORG/NAME")` once it is on the Hub."""
    model = unwrap_model(model)
    directory = Path(directory)
    save_checkpoint(model, directory / "model.safetensors")
    write_text(directory / "config.json", json.dumps(model.cfg.to_dict(), indent=2, sort_keys=True))
    write_text(directory / "README.md", hub.model_card(type(model).__name__))
    return directory


def push_to_hub(model: nn.Module, repo_id: str, **upload: Any) -> str:
    """`save_pretrained` into a temporary folder and upload it to the Hub repository `repo_id`
    (created if needed; `upload` goes to `hub.upload_folder`: private, token, commit_message).
    Returns the commit URL."""
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        return hub.upload_folder(tmp, repo_id, **upload)
