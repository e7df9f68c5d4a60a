"""What the model learned before attention: patch-embedding filters and position embeddings.

Paper section 4.5 and Figure 7 (left and centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vitlab.inspect.attention import InspectError
from vitlab.models.layers import PatchEmbed


@dataclass
class FilterComponents:
    """Principal components of the patch-embedding filters, as images."""

    images: np.ndarray  # (k, P, P, C), each component a unit vector
    explained_variance_ratio: np.ndarray  # (k,)


@dataclass
class PositionSimilarity:
    """Cosine similarity of each patch position's embedding to every other position's."""

    similarity: np.ndarray  # (gh, gw, gh, gw): [i, j] is the map of patch (i, j)
    learned: bool  # False for fixed 2-D sin-cos embeddings (Appendix D.4)


def patch_embedding_components(model: nn.Module, k: int = 28) -> FilterComponents:
    """The top `k` principal components of the linear patch projection E (equation 1): its D
    rows, each a flattened P x P x C filter, centred, then an SVD. The paper's Figure 7 (left)
    shows the top 28 for ViT-L/32: they resemble plausible basis functions of a patch."""
    patch_embed = getattr(model, "patch_embed", None)
    if not isinstance(patch_embed, PatchEmbed):
        raise InspectError(
            "this model embeds patches with a CNN stem (a hybrid), so there are no linear "
            "patch filters to show"
        )
    w = patch_embed.proj.weight.detach().double().cpu()  # (D, C, P, P)
    D, C, P, _ = w.shape
    rows = w.reshape(D, C * P * P)  # (D, C*P*P)
    rows = rows - rows.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)  # vh: (min(D, CPP), C*P*P)
    var = s**2
    k = min(k, vh.shape[0])
    comps = vh[:k].reshape(k, C, P, P).permute(0, 2, 3, 1)  # (k, P, P, C)
    ratio = (var[:k] / var.sum().clamp_min(1e-30)).numpy()
    return FilterComponents(comps.numpy(), ratio)


def position_embeddings(model: nn.Module) -> tuple[torch.Tensor, bool]:
    """The patch positions' embeddings laid out on the grid, (gh, gw, D), without the class
    token's entry, and whether they are learned (False: the fixed 2-D sin-cos ones)."""
    cfg = model.cfg
    pos = model.pos_embed.detach().float().cpu()  # (1, n, D)
    gh, gw = cfg.grid_size()
    prefix = pos.shape[1] - gh * gw
    if prefix < 0:
        raise InspectError(
            f"{pos.shape[1]} position embeddings do not cover the {gh}x{gw} patch grid"
        )
    grid = pos[0, prefix:].reshape(gh, gw, -1)  # (gh, gw, D)
    return grid, cfg.pos_embed == "learn"


def position_embedding_similarity(model: nn.Module) -> PositionSimilarity:
    """Cosine similarity between the position embedding of every patch and all others, on the
    patch grid (Figure 7 centre: close patches have similar embeddings, with row and column
    structure)."""
    grid, learned = position_embeddings(model)
    return PositionSimilarity(cosine_similarity_grid(grid), learned)


def cosine_similarity_grid(grid: torch.Tensor) -> np.ndarray:
    """(gh, gw, D) embeddings -> (gh, gw, gh, gw) cosine similarities."""
    gh, gw, D = grid.shape
    flat = torch.nn.functional.normalize(grid.double().reshape(gh * gw, D), dim=-1)  # (N, D)
    sim = flat @ flat.T  # (N, N)
    return sim.reshape(gh, gw, gh, gw).numpy()  # (gh, gw, gh, gw)
