"""timm's layout. vitlab's module names follow timm's, so the key map is the identity; what this
adapter adds is reading the architecture from the tensors (and, from the config.json of a hub
folder, the preprocessing and head count) and refusing what does not fit, and `timm_twin`:
timm's own model with a vitlab model's architecture and weights, for comparisons. MAE encoders
(`vit_*_patch16_224.mae`) are headless ViTs of this layout; facebookresearch/mae's files with
the decoder beside them load as their encoder. DeiT's distilled models
(`deit_*_distilled_patch16_224`) add `dist_token`, `head_dist` and two prefix position
embeddings, which are vitlab's names too."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from vitlab.errors import CheckpointError, ConfigError, require
from vitlab.models.config import AnyConfig, ResNetConfig, ViTConfig, replace
from vitlab.runtime.device import unwrap_model
from vitlab.weights.adapter import (
    GUESSED,
    Source,
    config_metadata,
    count_indexed,
    drop_parts,
    grid_from_tokens,
    guess_num_heads,
    imagenet_class_names,
    log,
    stored_config,
    written_by_vitlab,
)
from vitlab.weights.io import RawCheckpoint, save_safetensors

_UNSUPPORTED = {
    "reg_token": "register tokens",
    "norm_pre.weight": "a pre-transformer LayerNorm (CLIP-style)",
    "attn_pool.latent": "attention pooling",
    "blocks.0.ls1.gamma": "LayerScale",
}


def _is_vit(keys: set[str] | dict) -> bool:
    return "patch_embed.proj.weight" in keys and "blocks.0.attn.qkv.weight" in keys


def _is_resnet(keys: set[str] | dict, prefix: str = "") -> bool:
    return f"{prefix}stem.conv.weight" in keys and f"{prefix}stages.0.blocks.0.conv1.weight" in keys


def _detect(raw: RawCheckpoint) -> bool:
    """timm's key names (vitlab's own files share them, and say so in their metadata)."""
    return not written_by_vitlab(raw) and (_is_vit(raw.tensors) or _is_resnet(raw.tensors))


def infer_vit_config(sd: dict[str, torch.Tensor]) -> ViTConfig:
    keys = set(sd)
    for key, what in _UNSUPPORTED.items():
        if key in keys:
            raise CheckpointError(
                f"this timm model uses {what} ({key}), which vitlab does not build"
            )
    proj = sd["patch_embed.proj.weight"]  # (D, C, P, P)
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    backbone = None
    if _is_resnet(keys, "patch_embed.backbone."):  # a hybrid: the CNN's output feeds the proj
        backbone = infer_resnet_config(sd, "patch_embed.backbone.")
        in_chans = backbone.in_chans
    depth = count_indexed(keys, r"blocks\.(\d+)\.")
    mlp = sd["blocks.0.mlp.fc1.weight"].shape[0]
    class_token, distill_token = "cls_token" in keys, "dist_token" in keys
    n_prefix = int(class_token) + int(distill_token)
    side, pos_cls = grid_from_tokens(sd["pos_embed"].shape[1], n_prefix)
    fc_norm = "fc_norm.weight" in keys
    head = sd.get("head.weight")
    heads, guessed = guess_num_heads(dim, depth, mlp)
    return ViTConfig(
        backbone=backbone,
        img_size=side * patch * (backbone.reduction if backbone else 1),
        patch_size=patch,
        in_chans=in_chans,
        num_classes=0 if head is None else head.shape[0],
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
        pool="token" if class_token and not fc_norm else "gap",
        class_token=class_token,
        distill_token=distill_token,
        pos_embed_cls=pos_cls,
        fc_norm=fc_norm,
        qkv_bias="blocks.0.attn.qkv.bias" in keys,
        extra={GUESSED: {"num_heads": guessed}},
    )


def infer_resnet_config(sd: dict[str, torch.Tensor], prefix: str = "") -> ResNetConfig:
    """A ResNetV2 config from timm's tensors under `prefix`.

    Pre-activation (BiT) nets have no stem norm and use BiT's "fixed" stem; post-activation ones
    are the hybrid's stem with TF-"SAME" padding, as timm builds both. A 3x3 stem conv is vitlab's
    "small" stem. timm's standardisation (eps 1e-8) and GroupNorm eps (1e-5) are the defaults.
    """
    keys = {k[len(prefix) :] for k in sd if k.startswith(prefix)}
    stem = sd[f"{prefix}stem.conv.weight"]  # (width, C, k, k)
    layers = tuple(count_indexed(keys, rf"stages\.{i}\.blocks\.(\d+)\.") for i in range(4))
    layers = tuple(n for n in layers if n)
    width = stem.shape[0]
    wf = width // 64 if width % 64 == 0 else 1
    preact = "stem.norm.weight" not in keys
    head = sd.get(f"{prefix}head.fc.weight")  # (classes, C, 1, 1)
    return ResNetConfig(
        layers=layers,
        width_factor=wf,
        stem_width=width // wf,
        preact=preact,
        stem_type="small" if stem.shape[-1] == 3 else ("fixed" if preact else "same"),
        in_chans=stem.shape[1],
        num_classes=0 if head is None else head.shape[0],
    )


def _infer(raw: RawCheckpoint) -> AnyConfig:
    stored = stored_config(raw)
    if stored is not None:  # a vitlab export: everything timm's layout cannot hold
        return stored
    sd = raw.tensors
    cfg = infer_vit_config(sd) if _is_vit(sd) else infer_resnet_config(sd)
    if cfg.num_classes == 1000:  # an ImageNet-1k head: its class names travel with it
        cfg.class_names = imagenet_class_names()
    return _with_hub_config(cfg, raw.extra.get("config.json") or {})


def _with_hub_config(cfg: AnyConfig, hub: dict) -> AnyConfig:
    """What the config.json of timm's hub folders (`save_for_hf`; "timm:NAME.TAG" downloads
    one) says and the tensors cannot: the preprocessing of its `pretrained_cfg` (mean, std, and
    crop_pct where it centre-crops, as vitlab's resize rule does: e.g. ImageNet's mean and std
    for the `.mae` encoders, not the 0.5 default) and the head count of its `model_args`."""
    pre, args = hub.get("pretrained_cfg") or {}, hub.get("model_args") or {}
    found: dict = {}
    if "mean" in pre and "std" in pre:
        found.update(mean=tuple(pre["mean"]), std=tuple(pre["std"]))
    if pre.get("crop_mode", "center") == "center" and pre.get("crop_pct"):
        found["crop_pct"] = min(float(pre["crop_pct"]), 1.0)
    if isinstance(cfg, ViTConfig) and args.get("num_heads"):
        found["num_heads"] = int(args["num_heads"])
        cfg.extra.get(GUESSED, {}).pop("num_heads", None)
    return replace(cfg, **found) if found else cfg


# facebookresearch/mae's MaskedAutoencoderViT (e.g. its mae_visualize_vit_*.pth) keeps timm's
# encoder keys and, beside them, its decoder: dropped on loading, in one line.
_MAE_DECODER = {"decoder_": "the MAE decoder", "mask_token": "the MAE decoder"}


def _to_vitlab(raw: RawCheckpoint, cfg: AnyConfig) -> dict[str, torch.Tensor]:
    return drop_parts(raw, _MAE_DECODER)


def _export(model: nn.Module, path: Path) -> Path:
    """A timm state dict as .safetensors (timm's `pretrained_cfg_overlay=dict(file=...)` reads
    it); the pre-logits layer, which timm's ViT does not have, is refused rather than dropped."""
    model = unwrap_model(model)
    sd = model.state_dict()
    if any(k.startswith("pre_logits.") for k in sd):
        raise CheckpointError(
            "timm's VisionTransformer has no pre-logits layer; export this model with "
            "format='google' or 'hf' instead, or fine-tune it without representation_size"
        )
    cfg = _fold_weight_standardisation(model, sd)
    advice = timm_advice(cfg)
    if advice:
        log.warning(
            "timm builds this model with its own numerics; to reproduce its outputs (to fp32 "
            "rounding) %s",
            "; ".join(advice),
        )
    return save_safetensors(sd, path, config_metadata(cfg))


# timm's defaults for what vitlab lets a config choose: StdConv2d(Same) divides by
# sqrt(var + 1e-8), GroupNorm eps 1e-5, exact GELU and (ViT) LayerNorm eps 1e-6.
TIMM_STD_CONV_EPS = 1e-8
TIMM_GN_EPS = 1e-5


def timm_advice(cfg: AnyConfig) -> list[str]:
    """What a timm user must pass or set for `cfg`'s numerics, one item per difference; empty
    when timm's defaults are the model's. vit_jax's weight standardisation (std + 1e-5) is not
    among them: the export folds it into the weights (`_fold_weight_standardisation`)."""
    advice = []
    if isinstance(cfg, ViTConfig) and (cfg.act != "gelu" or cfg.layer_norm_eps != 1e-6):
        advice.append(
            f"pass act_layer={cfg.act!r} and norm_layer=partial(nn.LayerNorm, "
            f"eps={cfg.layer_norm_eps:g}) to timm.create_model (this model uses act={cfg.act}, "
            f"LayerNorm eps {cfg.layer_norm_eps:g}; timm: gelu, 1e-6)"
        )
    cnn = cfg.backbone if isinstance(cfg, ViTConfig) else cfg
    if cnn is not None and cnn.gn_eps != TIMM_GN_EPS:
        advice.append(
            f"then set the GroupNorm eps to {cnn.gn_eps:g} (timm's is {TIMM_GN_EPS:g} and no "
            "argument changes it): for m in model.modules(): if isinstance(m, nn.GroupNorm): "
            f"m.eps = {cnn.gn_eps:g}"
        )
    return advice


def _fold_weight_standardisation(model: nn.Module, sd: dict[str, torch.Tensor]) -> AnyConfig:
    """For a CNN (BiT, or a hybrid's stem) with vit_jax's weight standardisation, (w - mean) /
    (std + eps), which timm's StdConv2d cannot compute: write weights that timm's own
    standardisation, (w - mean) / sqrt(var + 1e-8), turns into the same standardised kernels,
    in `sd` (in place), and return the config that says so (vitlab reads the file back as timm
    does). The standardised kernel S has variance v < 1; k * S gives k * S / sqrt(k^2 v + 1e-8)
    = S for k = sqrt(1e-8 / (1 - v))."""
    from vitlab.models.resnet import StdConv2d

    cfg = model.cfg
    cnn = cfg.backbone if isinstance(cfg, ViTConfig) else cfg
    if cnn is None or (cnn.weight_std == "var" and cnn.std_conv_eps == TIMM_STD_CONV_EPS):
        return cfg
    for name, conv in model.named_modules():
        if isinstance(conv, StdConv2d):
            with torch.no_grad():
                s = conv.standardized_weight().double()  # (out, in, kh, kw)
            v = s.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
            k = torch.sqrt(TIMM_STD_CONV_EPS / (1 - v).clamp_min(1e-12))
            sd[f"{name}.weight"] = (k * s).to(conv.weight.dtype)
    timm_cnn = replace(cnn, weight_std="var", std_conv_eps=TIMM_STD_CONV_EPS)
    return replace(cfg, backbone=timm_cnn) if isinstance(cfg, ViTConfig) else timm_cnn


SOURCE = Source(
    name="timm",
    description="timm state dict (ViT: patch_embed.proj, blocks.N.attn.qkv; hybrid: "
    "patch_embed.backbone.stem.conv; ResNetV2: stem.conv, stages.N.blocks.M)",
    detect=_detect,
    infer_config=_infer,
    to_vitlab=_to_vitlab,
    export=_export,
    resample="timm",
)


# ------------------------------------------------------------------------------ the twin
def timm_twin(model: nn.Module) -> nn.Module:
    """timm's VisionTransformer (VisionTransformerDistilled for a distillation token) with
    vitlab's architecture and the very same weights (loaded strictly, so any difference in
    structure is an error, not a silent mismatch)."""
    timm_vit = require("timm.models.vision_transformer", "timm", "Comparing with timm")

    model = unwrap_model(model)
    cfg = model.cfg
    if not isinstance(cfg, ViTConfig) or cfg.backbone is not None:
        raise ConfigError("timm_twin builds timm's plain VisionTransformer; pass a plain ViT")
    if cfg.pos_embed != "learn" or cfg.representation_size:
        raise ConfigError(
            "timm's VisionTransformer has no sin-cos embedding or pre-logits layer; compare a "
            "plain variant such as vit_s16"
        )
    kind = timm_vit.VisionTransformer
    if cfg.distill_token:
        kind = require("timm.models.deit", "timm", "Comparing with timm").VisionTransformerDistilled
    twin = kind(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        global_pool="token" if cfg.pool == "token" else "avg",
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_dim / cfg.embed_dim,
        qkv_bias=cfg.qkv_bias,
        class_token=bool(cfg.class_token),
        no_embed_class=not cfg.pos_embed_cls,
        fc_norm=cfg.fc_norm,
        act_layer=nn.GELU if cfg.act == "gelu" else "gelu_tanh",
        norm_layer=functools.partial(nn.LayerNorm, eps=cfg.layer_norm_eps),
        dynamic_img_size=cfg.dynamic_img_size,
    )
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin
