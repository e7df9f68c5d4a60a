"""`vitlab inspect` as a library call: every picture of the paper's Figures 6 and 7 for one model
and a few images, written as PNGs with an index.html that explains each in one line."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitlab.files import atomic_path
from vitlab.inspect import plots
from vitlab.inspect.attention import (
    InspectError,
    attention_rollout,
    collect_attention,
    distillation_token_index,
    head_attention,
    mean_attention_distance,
    no_attention,
)
from vitlab.inspect.embeddings import patch_embedding_components, position_embedding_similarity
from vitlab.preprocess import label_of, prepare_image
from vitlab.progress import progress_bar
from vitlab.runtime.device import model_device


@dataclass
class ImageMaps:
    """Everything one forward pass of one image gives the report."""

    name: str
    display: np.ndarray  # (H, W, C) in [0, 1]: the input as the model sees it
    rollout: np.ndarray  # (gh, gw)
    heads: np.ndarray  # (len(heads), gh, gw) raw attention of the chosen block
    distance: np.ndarray  # (depth, heads) mean attention distance in pixels
    top_label: str
    # With DeiT's distillation token: its own maps, each head's top label (class, distillation)
    # and the cosine similarity of the two tokens after the final LayerNorm.
    rollout_dist: np.ndarray | None = None
    heads_dist: np.ndarray | None = None
    head_labels: tuple[str, str] | None = None
    token_cosine: float | None = None


@dataclass
class Report:
    """What `inspect_model` wrote: (file name, one-line explanation) per picture, and notes."""

    out_dir: Path
    figures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.out_dir / "index.html"


def analyse_image(
    model: nn.Module, name: str, image: Image.Image, block: int, heads: Sequence[int] | None
) -> ImageMaps:
    """One forward pass (batch 1, no gradients): rollout, the chosen block's heads, and the mean
    attention distance of every head; the attention tensors are freed before returning."""
    cfg = model.cfg
    x, display = prepare_image(model, image)
    device = model_device(model)
    attn, out = collect_attention(model, x[None].to(device))
    grid, prefix = out["grid"], cfg.num_prefix_tokens
    rollout = attention_rollout(attn, grid, prefix, cfg.pool)[0]
    chosen = head_attention(attn[block], grid, prefix, cfg.pool, heads)[0]
    distance = np.stack(
        [mean_attention_distance(a, grid, cfg.feature_stride, prefix) for a in attn]
    )  # (depth, heads)
    logits = out["logits"]
    top = label_of(model, int(logits[0].argmax())) if logits.shape[-1] else "(no head)"
    maps = ImageMaps(name, display, rollout, chosen, distance, top)
    dist = distillation_token_index(cfg)
    if dist is not None:
        maps.rollout_dist = attention_rollout(attn, grid, prefix, cfg.pool, token=dist)[0]
        maps.heads_dist = head_attention(attn[block], grid, prefix, cfg.pool, heads, dist)[0]
        maps.head_labels = tuple(
            label_of(model, int(out[k][0].argmax())) for k in ("logits_cls", "logits_dist")
        )
        t = out["norm"][0, [0, dist]].float()  # the class token (or first patch) and dist token
        if cfg.class_token:
            maps.token_cosine = float(torch.nn.functional.cosine_similarity(t[0], t[1], dim=0))
    del attn, out
    return maps


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)[:40] or "image"


def _check_block(model: nn.Module, block: int | None) -> int:
    depth = model.cfg.depth
    block = depth - 1 if block is None else block
    if not -depth <= block < depth:
        raise InspectError(f"block {block} does not exist; this model has blocks 0..{depth - 1}")
    return block % depth


def _write_embedding_figures(model: nn.Module, report: Report, components: int) -> None:
    cfg = model.cfg
    try:
        comps = patch_embedding_components(model, components)
    except InspectError as e:
        report.notes.append(f"No patch-embedding filters: {e}.")
    else:
        p = cfg.patch_size
        plots.plot_filters(
            comps,
            report.out_dir / "filters.png",
            f"top {len(comps.images)} PCs of the "
            f"{p}x{p}x{cfg.in_chans} patch filters (% of variance)",
        )
        report.figures.append(
            (
                "filters.png",
                "Figure 7 (left): principal components of the linear patch-embedding filters "
                f"({p}x{p}x{cfg.in_chans} each), min-max scaled; trained models show smooth "
                "basis-function-like patterns, random ones noise.",
            )
        )
    sim = position_embedding_similarity(model)
    kind = "learned" if sim.learned else "fixed 2-D sin-cos (this model learns none)"
    plots.plot_position_similarity(
        sim, report.out_dir / "position_similarity.png", f"position embeddings: {kind}"
    )
    report.figures.append(
        (
            "position_similarity.png",
            "Figure 7 (centre): tile (row, column) shows the cosine similarity of that patch "
            f"position's {kind} embedding to every other position; nearby patches and patches "
            "in the same row or column are more similar in a trained model.",
        )
    )
    if not sim.learned:
        report.notes.append(
            "This model uses fixed 2-D sin-cos position embeddings (Appendix D.4); the "
            "similarity figure shows those fixed embeddings, nothing learned."
        )


def _write_distance_figure(distance: np.ndarray, img_px: int, report: Report) -> tuple[str, str]:
    plots.plot_attention_distance(
        distance,
        report.out_dir / "attention_distance.png",
        "mean attention distance per head, averaged over the images",
        img_px,
    )
    return (
        "attention_distance.png",
        f"Figure 7 (right): mean attention distance in pixels ({img_px} px input) of every "
        "head against depth, averaged over the images; small values are local heads, large "
        "ones attend across the image.",
    )


def _write_image_figures(
    model: nn.Module, maps: ImageMaps, i: int, block: int, heads: Sequence[int], out_dir: Path
) -> list[tuple[str, str]]:
    token = model.cfg.pool == "token"
    pool_word = "class token" if token else "mean of the patch rows"  # for titles
    rows = "the class token's row" if token else "the mean of the patch tokens' rows"
    figures = []
    name = f"rollout_{i:02d}_{_slug(maps.name)}.png"
    plots.plot_overlay(
        maps.display,
        maps.rollout,
        out_dir / name,
        f"{Path(maps.name).name}: attention rollout ({pool_word}); predicted: {maps.top_label}",
    )
    figures.append(
        (
            name,
            f"Figure 6: attention rollout for {html.escape(maps.name)} (identity added for the "
            f"residual, rows renormalised, blocks multiplied; {rows} over the patches; "
            "overlay scaled from min to max).",
        )
    )
    name = f"heads_block{block}_{i:02d}_{_slug(maps.name)}.png"
    plots.plot_heads(
        maps.display,
        maps.heads,
        heads,
        out_dir / name,
        f"{Path(maps.name).name}: raw attention of block {block} ({pool_word} over the patches)",
    )
    figures.append(
        (
            name,
            f"Raw attention of heads {', '.join(map(str, heads))} of block {block} for "
            f"{html.escape(maps.name)}, without rollout ({rows}, each head scaled from "
            "min to max).",
        )
    )
    if maps.rollout_dist is not None:
        figures += _write_distillation_figures(maps, i, block, heads, out_dir)
    return figures


def _write_distillation_figures(
    maps: ImageMaps, i: int, block: int, heads: Sequence[int], out_dir: Path
) -> list[tuple[str, str]]:
    """The same two pictures read from DeiT's distillation token, whose head learned the
    teacher's labels."""
    cls_label, dist_label = maps.head_labels
    says = f"class head: {cls_label}, distillation head: {dist_label}"
    name = f"rollout_dist_{i:02d}_{_slug(maps.name)}.png"
    plots.plot_overlay(
        maps.display,
        maps.rollout_dist,
        out_dir / name,
        f"{Path(maps.name).name}: attention rollout (distillation token); {says}",
    )
    figures = [
        (
            name,
            f"Attention rollout for {html.escape(maps.name)} read from the distillation token's "
            "row (DeiT): where the token whose head learned the teacher's labels looks; compare "
            f"with the class head's picture above ({html.escape(says)}).",
        )
    ]
    name = f"heads_dist_block{block}_{i:02d}_{_slug(maps.name)}.png"
    plots.plot_heads(
        maps.display,
        maps.heads_dist,
        heads,
        out_dir / name,
        f"{Path(maps.name).name}: raw attention of block {block} (distillation token)",
    )
    figures.append(
        (
            name,
            f"Raw attention of heads {', '.join(map(str, heads))} of block {block} for "
            f"{html.escape(maps.name)}, the distillation token's row (each head scaled from "
            "min to max).",
        )
    )
    return figures


def inspect_model(
    model: nn.Module,
    images: Sequence[tuple[str, Image.Image]],
    out_dir: str | Path,
    *,
    block: int | None = None,
    heads: Sequence[int] | None = None,
    components: int = 28,
    progress: bool = True,
) -> Report:
    """Write the paper's Figure 6 and 7 pictures for `model` and `images` (name, PIL image in the
    model's channel mode) into `out_dir`, with an index.html. One image at a time, without
    gradients, so the large variants fit on a CPU."""
    if not images:
        raise InspectError("no images to inspect; pass --images or leave it out for the samples")
    if not hasattr(model, "forward_intermediates"):
        raise InspectError(no_attention(model))
    model.eval()
    report = Report(Path(out_dir))
    report.out_dir.mkdir(parents=True, exist_ok=True)
    block = _check_block(model, block)
    n_heads = model.cfg.num_heads
    heads = list(range(n_heads)) if heads is None else list(heads)
    if not all(0 <= h < n_heads for h in heads):
        raise InspectError(f"heads {heads} do not all exist; this model has heads 0..{n_heads - 1}")
    _write_embedding_figures(model, report, components)
    if model.cfg.pool == "gap":
        report.notes.append(
            "This model averages the patch tokens instead of using a class token, so rollout "
            "and raw attention show the mean over the patch tokens' rows."
        )
    distances, per_image, cosines = [], [], []
    for i, (name, image) in enumerate(progress_bar(images, desc="inspect", disable=not progress)):
        maps = analyse_image(model, name, image, block, heads)
        per_image += _write_image_figures(model, maps, i, block, heads, report.out_dir)
        distances.append(maps.distance)
        if maps.token_cosine is not None:
            cosines.append(maps.token_cosine)
    if distillation_token_index(model.cfg) is not None:
        report.notes.append(distillation_note(cosines))
    img_px = int(maps.display.shape[0])
    report.figures.append(_write_distance_figure(np.mean(distances, axis=0), img_px, report))
    report.figures += per_image
    write_index(report, model)
    return report


def distillation_note(cosines: Sequence[float]) -> str:
    """What the distillation token is, with the mean cosine similarity of the class and
    distillation tokens after the last block (DeiT reports 0.93 on ImageNet: close, not equal)."""
    note = (
        "This model has DeiT's distillation token: its head learned the teacher's labels while "
        "the class head learned the true ones, and the prediction averages the two heads. Each "
        "image's pictures appear twice, read from the class token and from the distillation "
        "token."
    )
    if cosines:
        note += (
            f" The two tokens' cosine similarity after the final LayerNorm is "
            f"{np.mean(cosines):.2f} (mean over the images; DeiT measured 0.93 on ImageNet, "
            "and two identical tokens would give 1)."
        )
    return note


def write_index(report: Report, model: nn.Module) -> Path:
    """index.html: the model's description, the notes, and each picture with its line."""
    cfg = model.cfg
    src = cfg.extra.get("loaded_from", "")
    head = (
        f"{cfg.arch} model: {cfg.depth} blocks, width {cfg.embed_dim}, {cfg.num_heads} heads, "
        f"patch {cfg.patch_size}, {cfg.img_size} px, pool={cfg.pool}, pos_embed={cfg.pos_embed}"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>vitlab inspect</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
        "img{max-width:100%}figure{margin:1.5em 0}</style></head><body>",
        "<h1>vitlab inspect</h1>",
        f"<p>{html.escape(head)}</p>",
    ]
    if src:
        parts.append(f"<p>checkpoint: <code>{html.escape(src)}</code></p>")
    parts += [f"<p><b>Note:</b> {html.escape(n)}</p>" for n in report.notes]
    for name, caption in report.figures:
        parts.append(
            f"<figure><img src='{html.escape(name)}' alt='{html.escape(name)}'>"
            f"<figcaption>{caption}</figcaption></figure>"
        )
    parts.append("</body></html>")
    with atomic_path(report.index) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return report.index
