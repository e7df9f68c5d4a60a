"""Hugging Face transformers' ViT layouts: `ViTModel` and `ViTForImageClassification`
(model_type "vit"), the encoder of `ViTMAEModel` and `ViTMAEForPreTraining` (model_type
"vit_mae", He et al. 2022), whose keys are ViT's, and DeiT's distilled `DeiTModel` and
`DeiTForImageClassificationWithTeacher` (model_type "deit", Touvron et al. 2021): ViT's keys
under `deit.`, plus the distillation token and its head (`LAYOUTS`).

A directory written by `save_pretrained`: config.json (architecture, `layer_norm_eps` - 1e-12 by
default, not timm's 1e-6 -, `hidden_act`, `id2label`) and model.safetensors or pytorch_model.bin
with separate query/key/value projections. The key map fuses them into vitlab's one qkv matrix
(rows ordered q, k, v) and splits it again on export. `ViTModel`'s pooler (dense + tanh on the
class token) is the paper's pre-logits layer (`representation_size`).

An MAE encoder loads as a headless ViT (class token, token pooling, no pre-logits layer): its
stored fixed sin-cos position embeddings become learned ones, as MAE's fine-tuning has them;
`ViTMAEForPreTraining`'s decoder (`decoder.*`) is dropped, and a log line says so.

preprocessor_config.json is a `BitImageProcessor` that does what vitlab does
(`vitlab.preprocess`): short side to int(S / crop_pct), centre crop S x S, the model's resample
filter, mean and std. (A `ViTImageProcessor` would squash every image to S x S.) Loading reads
either kind: mean and std, and crop_pct from a short-side resize and centre crop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.files import atomic_write
from vitlab.models.config import AnyConfig, ViTConfig
from vitlab.preprocess import RESCALE, Preprocess, crop_pct_for, preprocess_of
from vitlab.runtime.device import unwrap_model
from vitlab.weights.adapter import Rule, Source, apply_rules, drop_parts, invert_rules, rule
from vitlab.weights.io import RawCheckpoint, save_safetensors

# hidden_act in config.json <-> vitlab's act (transformers' ACT2FN names).
_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
_EXPORT_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
log = logging.getLogger("vitlab")

# Block-level names: the files' (legacy) names, and transformers>=5's in-memory module names.
_BLOCK_NAMES = {
    "file": {
        "prefix": "encoder.layer",
        "q": "attention.attention.query",
        "k": "attention.attention.key",
        "v": "attention.attention.value",
        "proj": "attention.output.dense",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
    },
    "module": {
        "prefix": "layers",
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "proj": "attention.o_proj",
        "fc1": "mlp.fc1",
        "fc2": "mlp.fc2",
    },
}


def _fuse(*ts: torch.Tensor) -> torch.Tensor:
    return torch.cat(ts, dim=0)  # q, k, v rows stacked: (3D, D) or (3D,)


def _split3(t: torch.Tensor) -> list[torch.Tensor]:
    return [c.clone() for c in t.chunk(3, dim=0)]


@dataclass(frozen=True)
class Layout:
    """A transformers model family whose encoder is vitlab's ViT under `rules`' keys: how its
    config.json names it, a key only its files hold, and the parts of its files that only
    pre-training uses, dropped on loading (`adapter.drop_parts`, which says so in one line)."""

    model_type: str  # config.json "model_type"
    architectures: tuple[str, ...]  # config.json "architectures"
    marker: str | None = None  # a key that tells the layout without a config.json
    dropped: tuple[tuple[str, str], ...] = ()  # (key prefix, what the part is)


LAYOUTS = {
    "vit": Layout("vit", ("ViTModel", "ViTForImageClassification")),
    "deit": Layout(
        "deit",
        ("DeiTModel", "DeiTForImageClassificationWithTeacher", "DeiTForImageClassification"),
        marker="deit.embeddings.distillation_token",
    ),
    "vit_mae": Layout(
        "vit_mae",
        ("ViTMAEModel", "ViTMAEForPreTraining"),
        marker="decoder.decoder_embed.weight",
        dropped=(("decoder.", "the MAE decoder"),),
    ),
}


def layout_of(raw: RawCheckpoint) -> Layout:
    """The layout config.json's model_type or architectures name, else the one whose marker key
    the file holds, else plain ViT's."""
    hf = raw.extra.get("config.json", {})
    named = set(hf.get("architectures") or ())
    for layout in LAYOUTS.values():
        if hf.get("model_type") == layout.model_type or named & set(layout.architectures):
            return layout
    keys = raw.keys()
    return next((x for x in LAYOUTS.values() if x.marker in keys), LAYOUTS["vit"])


def _detect(raw: RawCheckpoint) -> bool:
    if raw.extra.get("config.json", {}).get("model_type") in LAYOUTS:
        return True
    keys = raw.keys()
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys)


def _base(keys: set[str]) -> str:
    """The "vit." ("deit.") prefix inside ViTForImageClassification (DeiT's classifiers); none
    for a bare ViTModel or DeiTModel."""
    return next((b for b in ("vit.", "deit.") if f"{b}embeddings.cls_token" in keys), "")


def _names(keys: set[str], base: str) -> dict[str, str]:
    return _BLOCK_NAMES["module" if f"{base}layers.0.layernorm_before.weight" in keys else "file"]


def rules(cfg: ViTConfig, base: str = "vit.", names: dict[str, str] | None = None) -> list[Rule]:
    """vitlab <-> transformers keys for `cfg` (the declarative map)."""
    n = names or _BLOCK_NAMES["file"]
    e = f"{base}embeddings."
    head = "cls_classifier" if cfg.distill_token else "classifier"
    out = [
        rule("cls_token", f"{e}cls_token"),
        rule("pos_embed", f"{e}position_embeddings"),
        rule("patch_embed.proj.weight", f"{e}patch_embeddings.projection.weight"),
        rule("patch_embed.proj.bias", f"{e}patch_embeddings.projection.bias"),
        rule("norm.weight", f"{base}layernorm.weight"),
        rule("norm.bias", f"{base}layernorm.bias"),
        rule("head.weight", f"{head}.weight", optional=True),
        rule("head.bias", f"{head}.bias", optional=True),
    ]
    if cfg.distill_token:  # DeiT: the distillation token and its head
        out += [
            rule("dist_token", f"{e}distillation_token"),
            rule("head_dist.weight", "distillation_classifier.weight", optional=True),
            rule("head_dist.bias", "distillation_classifier.bias", optional=True),
        ]
    if cfg.representation_size:
        out += [
            rule("pre_logits.fc.weight", f"{base}pooler.dense.weight"),
            rule("pre_logits.fc.bias", f"{base}pooler.dense.bias"),
        ]
    for i in range(cfg.depth):
        hf, ours = f"{base}{n['prefix']}.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            out += [
                rule(f"{ours}norm1.{p}", f"{hf}layernorm_before.{p}"),
                rule(f"{ours}norm2.{p}", f"{hf}layernorm_after.{p}"),
                rule(f"{ours}attn.proj.{p}", f"{hf}{n['proj']}.{p}"),
                rule(f"{ours}mlp.fc1.{p}", f"{hf}{n['fc1']}.{p}"),
                rule(f"{ours}mlp.fc2.{p}", f"{hf}{n['fc2']}.{p}"),
            ]
        qkv = ["weight"] + (["bias"] if cfg.qkv_bias else [])
        out += [
            rule(f"{ours}attn.qkv.{p}", tuple(f"{hf}{n[c]}.{p}" for c in "qkv"), _fuse, _split3)
            for p in qkv
        ]
    return out


def _class_names(hf: dict[str, Any], n: int) -> tuple[str, ...] | None:
    labels = hf.get("id2label") or {}
    names = [str(labels.get(str(i), labels.get(i, ""))) for i in range(n)]
    if not n or len(labels) != n or all(s == f"LABEL_{i}" for i, s in enumerate(names)):
        return None
    return tuple(names)


def _infer(raw: RawCheckpoint) -> AnyConfig:
    hf = raw.extra.get("config.json")
    if hf is None:
        raise CheckpointError(
            f"{raw.path}: Hugging Face weights need their config.json beside them; point at the "
            "directory that save_pretrained wrote"
        )
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTS:
        raise CheckpointError(f"{raw.path}: hidden_act={act!r} is not one of {', '.join(_ACTS)}")
    keys = raw.keys()
    base = _base(keys)
    deit = layout_of(raw).model_type == "deit"
    if deit and "classifier.weight" in keys:
        raise CheckpointError(
            f"{raw.path}: DeiTForImageClassification classifies from the class token alone, "
            "beside a distillation token it never reads; vitlab loads "
            "DeiTForImageClassificationWithTeacher (both heads) and DeiTModel (no head)"
        )
    head = raw.tensors.get("cls_classifier.weight" if deit else "classifier.weight")
    num_classes = 0 if head is None else int(head.shape[0])
    pooled = f"{base}pooler.dense.weight" in keys
    dim = int(hf["hidden_size"])
    img_size = int(hf.get("image_size", 224))
    mean, std, crop_pct = _preprocessing(raw.path, img_size)
    return ViTConfig(
        img_size=img_size,
        patch_size=int(hf.get("patch_size", 16)),
        in_chans=int(hf.get("num_channels", 3)),
        num_classes=num_classes,
        class_names=_class_names(hf, num_classes),
        embed_dim=dim,
        depth=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]),
        mlp_dim=int(hf["intermediate_size"]),
        representation_size=int(hf.get("pooler_output_size") or dim) if pooled else None,
        distill_token=deit,
        qkv_bias=bool(hf.get("qkv_bias", True)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        act=_ACTS[act],
        mean=mean,
        std=std,
        crop_pct=crop_pct,
    )


def _preprocessing(path: Path, img_size: int) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """image_mean / image_std of preprocessor_config.json (Google's 0.5 / 0.5 when absent), and
    crop_pct: S / shortest_edge where it resizes the short side and centre-crops S x S (a
    `BitImageProcessor`, as vitlab exports), else 1.0 (a `ViTImageProcessor`'s S x S)."""
    pre = Path(path) / "preprocessor_config.json"
    d = json.loads(pre.read_text()) if pre.is_file() else {}
    mean, std = tuple(d.get("image_mean", (0.5,) * 3)), tuple(d.get("image_std", (0.5,) * 3))
    short = (d.get("size") or {}).get("shortest_edge") if d.get("do_resize", True) else None
    crop = d.get("crop_size") or {}
    cropped = d.get("do_center_crop") and crop.get("height") == crop.get("width") == img_size
    if not short or not cropped or short <= img_size:
        return mean, std, 1.0
    return mean, std, crop_pct_for(img_size, short)


def _to_vitlab(raw: RawCheckpoint, cfg: AnyConfig) -> dict[str, torch.Tensor]:
    layout = layout_of(raw)
    tensors = drop_parts(raw, dict(layout.dropped))  # the MAE decoder goes
    keys = set(tensors)
    base = _base(keys)
    what = f"{raw.path} (hf, {layout.model_type})"
    return apply_rules(rules(cfg, base, _names(keys, base)), tensors, what)


def _check_exportable(cfg: AnyConfig) -> None:
    problems = []
    if not isinstance(cfg, ViTConfig) or cfg.backbone is not None:
        problems.append("transformers' ViT has no CNN stem (export hybrids as 'google' or 'timm')")
    elif cfg.pool != "token" or not cfg.pos_embed_cls or cfg.fc_norm:
        problems.append("transformers' ViT classifies from the class token only")
    elif cfg.pos_embed != "learn":
        problems.append("transformers' ViT has learned position embeddings only")
    elif cfg.representation_size and cfg.num_classes:
        problems.append("ViTForImageClassification has no pre-logits layer")
    if problems:
        raise CheckpointError(f"cannot export to Hugging Face: {problems[0]}")


def hf_config(cfg: ViTConfig) -> dict[str, Any]:
    """config.json for transformers' ViT, or DeiT with a distillation token (written by hand:
    transformers is not required)."""
    names = cfg.class_names or tuple(f"LABEL_{i}" for i in range(cfg.num_classes))
    family, classifier = "ViT", "ViTForImageClassification"
    if cfg.distill_token:
        family, classifier = "DeiT", "DeiTForImageClassificationWithTeacher"
    return {
        "architectures": [classifier if cfg.num_classes else f"{family}Model"],
        "model_type": family.lower(),
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim,
        "hidden_act": _EXPORT_ACT[cfg.act],
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": cfg.layer_norm_eps,
        "image_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "qkv_bias": cfg.qkv_bias,
        "pooler_output_size": cfg.representation_size or cfg.embed_dim,
        "pooler_act": "tanh",
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


FILES = ("model.safetensors", "config.json", "preprocessor_config.json")  # what an export writes


def preprocessor_config(p: Preprocess) -> dict[str, Any]:
    """preprocessor_config.json: a `BitImageProcessor` doing `p`'s preprocessing (the short side
    resized to int(S / crop_pct), centre crop, resample filter, mean, std); a 1-channel model's
    turns `do_convert_rgb` off, and takes greyscale ("L") images."""
    return {
        "image_processor_type": "BitImageProcessor",
        "do_convert_rgb": p.mode == "RGB",
        "do_resize": True,
        "size": {"shortest_edge": p.resize_size},
        "resample": int(Image.Resampling[p.pil_resample]),
        "do_center_crop": True,
        "crop_size": {"height": p.img_size, "width": p.img_size},
        "do_rescale": True,
        "rescale_factor": RESCALE,
        "do_normalize": True,
        "image_mean": list(p.mean),
        "image_std": list(p.std),
    }


def _export(model: nn.Module, path: Path) -> Path:
    """A directory `ViTForImageClassification.from_pretrained` (or `ViTModel`; DeiT's
    `DeiTForImageClassificationWithTeacher` or `DeiTModel` with a distillation token) and
    `transformers.pipeline` read, with a preprocessor_config.json that preprocesses as vitlab
    does (`preprocessor_config`)."""
    model = unwrap_model(model)
    cfg = model.cfg
    _check_exportable(cfg)
    base = ("deit." if cfg.distill_token else "vit.") if cfg.num_classes else ""
    sd = invert_rules(rules(cfg, base), model.state_dict(), "the Hugging Face layout")
    path = Path(path)
    save_safetensors(sd, path / "model.safetensors", {"format": "pt"})
    pre = preprocessor_config(preprocess_of(model))
    if cfg.in_chans == 1:
        log.warning(
            "note: transformers.pipeline converts every image to RGB, which this 1-channel model "
            "cannot take; call the exported image processor on greyscale (PIL mode 'L') images "
            "yourself (its do_convert_rgb is off)"
        )
    for name, obj in (("config.json", hf_config(cfg)), ("preprocessor_config.json", pre)):
        text = json.dumps(obj, indent=2)
        atomic_write(path / name, lambda tmp, text=text: tmp.write_text(text))
    return path


SOURCE = Source(
    name="hf",
    description="Hugging Face ViT directory (config.json model_type 'vit', 'vit_mae' or "
    "'deit', vit.encoder.layer.N.attention.attention.query; an MAE decoder is dropped)",
    detect=_detect,
    infer_config=_infer,
    to_vitlab=_to_vitlab,
    export=_export,
    resample="hf",
    folder=FILES,
)
