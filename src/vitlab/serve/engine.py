"""What the server runs: a loaded model, its preprocessing, and the outputs of one batch.

Decoding and preprocessing are `vitlab predict`'s (`decode_image`: EXIF orientation, every PIL
mode, the decompression-bomb limit; then the model's own resize, crop and normalisation), so the
page, the API and the command line give the same classes for the same file. Explanations are the
attention rollout of the paper's Figure 6 and each block's and head's raw attention, with the
overlay drawn as in github.com/google-research/vision_transformer/issues/27: the map normalised,
resized with LANCZOS, blurred by one patch, blended over the image.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

from vitlab.data.images import MAX_PIXELS, decode_image
from vitlab.inspect.attention import attention_rollout, collect_attention, head_attention
from vitlab.preprocess import label_of, prepare_image
from vitlab.runtime.device import keep_freed_memory, model_device
from vitlab.runtime.kernels import PackedWeights
from vitlab.runtime.precision import in_precision, inference_precision, weights_dtype


@dataclass
class Output:
    """One image's result: probabilities, logits and (when asked) its attention maps."""

    probs: torch.Tensor  # (classes,)
    logits: torch.Tensor  # (classes,)
    rollout: np.ndarray | None = None  # (gh, gw)
    heads: np.ndarray | None = None  # (blocks, heads, gh, gw)


class Engine:
    """A model ready to serve: `prepare` bytes into an input, `run` a batch of inputs."""

    def __init__(
        self, model: nn.Module, name: str, max_pixels: int = MAX_PIXELS, precision: str = "fp32"
    ) -> None:
        self.model, self.name, self.max_pixels = model.eval(), name, max_pixels
        self.device = model_device(model)
        # fp32, bf16 or auto (`inference_precision`): what runs is `runner`, the model itself
        # or its bf16 copy; `model` answers for the config, classes and preprocessing
        self.precision = inference_precision(precision, self.device)
        self.runner = in_precision(self.model, self.precision)
        self.can_explain = hasattr(model, "forward_intermediates")
        self._packed = PackedWeights()
        if self.device.type == "cpu":
            # without it every batch's activations go back to the kernel and are faulted in
            # again: ViT-B/16 ran 2.7 instead of 3.9 img/s at batch 16 in the worker thread
            keep_freed_memory()

    def prepare(self, data: bytes, filename: str) -> tuple[torch.Tensor, np.ndarray]:
        """The input tensor (C, H, W) and the pixels as the model sees them (H, W, C); an
        ImageError (the message `vitlab predict` gives) for anything that is not a usable
        image."""
        image = decode_image(data, filename, self.model.cfg.in_chans, self.max_pixels)
        return prepare_image(self.model, image)

    @torch.inference_mode()
    def run(self, x: torch.Tensor, explain: bool) -> list[Output]:
        """One batch (B, C, H, W) -> one Output per image."""
        x = x.to(self.device, weights_dtype(self.runner))
        with self._packed:
            if not explain:
                logits = self.runner(x).float()
                return [Output(p, lg) for p, lg in zip(logits.softmax(-1).cpu(), logits.cpu())]
            cfg = self.model.cfg
            attn, out = collect_attention(self.runner, x)
        logits = out["logits"].float().cpu()
        grid, prefix = out["grid"], cfg.num_prefix_tokens
        rollout = attention_rollout(attn, grid, prefix, cfg.pool)  # (B, gh, gw)
        heads = np.stack([head_attention(a, grid, prefix, cfg.pool) for a in attn], 1)
        return [
            Output(lg.softmax(-1), lg, rollout[i], heads[i]) for i, lg in enumerate(logits)
        ]  # heads: (B, blocks, heads, gh, gw) -> per image

    def describe(self) -> dict[str, Any]:
        """`GET /v1/model`: the config, the classes and the preprocessing."""
        cfg = self.model.cfg
        return {
            "name": self.name,
            "arch": cfg.arch,
            "params": self.model.num_params(),
            "num_classes": cfg.num_classes,
            "class_names": [label_of(self.model, i) for i in range(cfg.num_classes)],
            "preprocessing": self.model.data_config,
            "can_explain": self.can_explain,
            "precision": self.precision,
            "config": cfg.to_dict(),
        }

    def answer(self, o: Output, topk: int, show: np.ndarray | None, took: float) -> dict:
        """The JSON of one prediction (with the overlay PNG when `show` is given)."""
        k = min(topk, len(o.probs))
        p, idx = o.probs.topk(k)
        top = [
            {"index": int(c), "label": label_of(self.model, int(c)), "probability": float(q)}
            for q, c in zip(p, idx)
        ]
        body: dict[str, Any] = {"model": self.name, "top": top, "ms": round(1000 * took, 2)}
        if o.rollout is not None and show is not None:
            body["explain"] = {
                "grid": list(o.rollout.shape),
                "rollout": np.round(o.rollout, 6).tolist(),
                "heads": np.round(o.heads, 5).tolist(),  # [block][head][row][col]
                "overlay_png": png_base64(overlay(show, o.rollout)),
                "image_png": png_base64(Image.fromarray(_uint8(show))),
            }
        return body


def _uint8(show: np.ndarray) -> np.ndarray:
    img = (np.clip(show, 0, 1) * 255).round().astype(np.uint8)
    return img[..., 0] if img.shape[-1] == 1 else img


def overlay(show: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """The map normalised to [0, 1], resized to the image with LANCZOS, blurred by one patch,
    coloured (inferno) and alpha-blended over the image (RGB)."""
    from matplotlib import colormaps

    base = Image.fromarray(_uint8(show)).convert("RGB")
    h = heat - heat.min()
    h = h / h.max() if h.max() > 0 else h
    big = Image.fromarray((h * 255).astype(np.uint8)).resize(base.size, Image.Resampling.LANCZOS)
    big = big.filter(ImageFilter.GaussianBlur(radius=base.size[0] / heat.shape[1]))  # a patch
    coloured = (colormaps["inferno"](np.asarray(big) / 255.0)[..., :3] * 255).astype(np.uint8)
    return Image.blend(base, Image.fromarray(coloured), alpha)


def png_base64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
