"""What the model attends to: raw attention, attention rollout, mean attention distance.

Paper section 4.5 and Appendix D.7-D.8. Every function takes the attention probabilities that
`VisionTransformer.forward_intermediates` returns, one (B, heads, N, N) tensor per block with
the prefix tokens first (the class token, then DeiT's distillation token, when the model has
them), and returns NumPy arrays laid out on the patch grid, so notebooks and the plotting module
can use them alike. `token=` picks the query row of one prefix token, such as
`distillation_token_index(model.cfg)` for what the distillation head reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from vitlab.errors import VitlabError
from vitlab.models.config import Pool
from vitlab.weights.onnx import GraphModel

HeadFusion = Literal["mean", "max", "min"]


class InspectError(VitlabError):
    """A model or request that an inspection cannot handle; the message says what to do."""


@torch.inference_mode()
def collect_attention(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """Run `model.forward_intermediates(x)` without gradients and return its per-block attention
    probabilities (a list of (B, heads, N, N) float32 CPU tensors) and the rest of its outputs
    (`grid`, `logits`, `norm`, ...). The per-block token tensors are dropped to save memory."""
    if not hasattr(model, "forward_intermediates"):
        raise InspectError(no_attention(model))
    out = model.forward_intermediates(x)
    attn = [a.float().cpu() for a in out.pop("attn")]  # the maps are small; NumPy wants the CPU
    for key in ("blocks", "embed"):
        out.pop(key, None)
    return attn, out


def no_attention(model: nn.Module) -> str:
    """Why `model` cannot show its attention, and what to do."""
    if isinstance(model, GraphModel):  # ONNX, OpenVINO
        return (
            f"{model.path.name} is {model.label}, which returns only the logits; explain with "
            "the PyTorch checkpoint it was exported from"
        )
    return (
        f"a {type(model).__name__} has no attention (it is not a Vision Transformer); leave "
        "the explanation out, or give a ViT checkpoint"
    )


def _fuse_heads(a: torch.Tensor, head_fusion: HeadFusion) -> torch.Tensor:
    if head_fusion == "mean":
        return a.mean(dim=1)
    if head_fusion == "max":
        return a.amax(dim=1)
    if head_fusion == "min":
        return a.amin(dim=1)
    raise InspectError(f"head_fusion={head_fusion!r} is not one of 'mean', 'max', 'min'")


def rollout_matrix(attn: Sequence[torch.Tensor], head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): per block fuse the heads, add the identity for
    the residual connection, renormalise the rows, and multiply the blocks in order.

    Returns (B, N, N): row i says how much each input token flows into output token i."""
    if not attn:
        raise InspectError("no attention maps given (the model has no blocks?)")
    result = None
    for a in attn:
        a = _fuse_heads(a.double(), head_fusion)  # (B, N, N)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result  # later blocks act on earlier ones
    return result


def distillation_token_index(cfg) -> int | None:
    """The position of DeiT's distillation token among the prefix tokens (after the class token
    when there is one), or None when the model has none."""
    if not getattr(cfg, "distill_token", False):
        return None
    return int(bool(cfg.class_token))


def query_rows(
    matrix: torch.Tensor,
    num_prefix_tokens: int,
    grid: tuple[int, int],
    pool: Pool,
    token: int | None = None,
) -> torch.Tensor:
    """The row that stands for the image: the class token's (pool="token"), or the mean of the
    patch tokens' rows (pool="gap", where the classifier averages the patch tokens); with
    `token`, the row of that prefix token instead (1 for DeiT's distillation token). Restricted
    to the patch columns and laid out on the grid: (..., N, N) -> (..., gh, gw)."""
    p = num_prefix_tokens
    if token is not None:
        if not 0 <= token < p:
            raise InspectError(
                f"prefix token {token} does not exist; this model has {p} prefix token(s)"
            )
        row = matrix[..., token, p:]
    elif pool == "token":
        if p == 0:
            raise InspectError("pool='token' needs a class token; use pool='gap'")
        row = matrix[..., 0, p:]  # (..., gh*gw)
    else:
        row = matrix[..., p:, p:].mean(dim=-2)  # (..., gh*gw)
    return row.reshape(*row.shape[:-1], grid[0], grid[1])  # (..., gh, gw)


def attention_rollout(
    attn: Sequence[torch.Tensor],
    grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    pool: Pool = "token",
    head_fusion: HeadFusion = "mean",
    token: int | None = None,
) -> np.ndarray:
    """The rollout map of every image (Figure 6): (B, gh, gw), summing to at most 1 per image
    (the rest of the mass stays on the prefix tokens). `token`: see `query_rows`."""
    matrix = rollout_matrix(attn, head_fusion)
    return query_rows(matrix, num_prefix_tokens, grid, pool, token).numpy()


def head_attention(
    attn: torch.Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    pool: Pool = "token",
    heads: Sequence[int] | None = None,
    token: int | None = None,
) -> np.ndarray:
    """Raw attention of one block's heads (B, heads, N, N) -> (B, len(heads), gh, gw): the class
    token's attention over the patches, or (gap models) the patch tokens' mean attention, or
    that of prefix token `token` (see `query_rows`)."""
    n_heads = attn.shape[1]
    heads = list(range(n_heads)) if heads is None else list(heads)
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise InspectError(f"head(s) {bad} do not exist; this block has heads 0..{n_heads - 1}")
    return query_rows(attn[:, heads].float(), num_prefix_tokens, grid, pool, token).numpy()


def patch_distances(grid: tuple[int, int], patch_px: float = 1.0) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every pair of patches: (N, N)."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=1).double() * patch_px  # (N, 2)
    return torch.cdist(centres, centres)


def mean_attention_distance(
    attn: torch.Tensor, grid: tuple[int, int], patch_px: float, num_prefix_tokens: int = 1
) -> np.ndarray:
    """Mean attention distance of every head of one block (Figure 7 right, Appendix D.8):
    sum over keys of attention(q, k) x the pixel distance between the patch centres, averaged
    over the patch queries and the batch. (B, heads, N, N) -> (heads,) in pixels.

    The prefix tokens have no position, so they are left out as queries and keys, and each query's
    attention is renormalised over the patches it attends to."""
    p = num_prefix_tokens
    a = attn[:, :, p:, p:].double()  # (B, heads, n, n)
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    dist = patch_distances(grid, patch_px).to(a.device)  # (n, n)
    per_query = (a * dist).sum(dim=-1)  # (B, heads, n)
    return per_query.mean(dim=(0, 2)).cpu().numpy()
