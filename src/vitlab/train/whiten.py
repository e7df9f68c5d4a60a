"""A data-dependent start for the patch embedding: the whitened principal directions of the
training images' patches (`patch_init: whiten`).

A ViT's patch embedding is the first layer of a CNN with kernel = stride = P, and the CIFAR-10
speedruns (hlb-CIFAR10, airbench) start that layer from the whitening of the data's patches
instead of random weights. Here the embedding's first min(D, C·P·P) output channels become the
patches' principal directions, each scaled by 1 / sqrt(its variance + eps), with a bias that
centres them: on the sample those outputs have zero mean and the identity as their covariance
(the directions of near-zero variance are damped by `eps` instead of amplified). When D is
larger than C·P·P the remaining channels keep their random initialisation (a linear layer can
add no new direction of the pixels); when it is smaller, the weakest directions are left out.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data.sets import ArraySet, FileSet, ImageSet
from vitlab.data.transforms import AugConfig, normalize
from vitlab.errors import ConfigError
from vitlab.models.layers import PatchEmbed

log = logging.getLogger("vitlab")

CHUNK = 256  # images per pass of the covariance sum (bounded memory at 224 px)


def patch_embedding(model: nn.Module, key: str = "patch_init=whiten") -> PatchEmbed:
    """The model's pixel patch embedding; for a model without one, a one-line error naming
    the training `key` that needed it."""
    embed = getattr(model, "patch_embed", None)
    if not isinstance(embed, PatchEmbed):
        kind = "a hybrid's patch embedding reads CNN features" if embed is not None else (
            f"{type(model).__name__} has no patch embedding")  # fmt: skip
        raise ConfigError(f"{key} is about a ViT's pixel patch embedding, and {kind}: drop it")
    return embed


def sample_images(images: ImageSet, n: int, aug: AugConfig, seed: int) -> torch.Tensor:
    """`n` training images (all of them when there are fewer), drawn with `seed`, prepared by
    the evaluation preprocessing `aug` (no augmentation): uint8 (n, C, S, S)."""
    if not isinstance(images, (ArraySet, FileSet)):
        raise ConfigError(
            "patch_init=whiten samples training images by index, which a WebDataset stream "
            "cannot do: drop patch_init, or train from an image folder"
        )
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:n].tolist()
    x, _, _ = images.batch(idx, aug, g)
    return x


def patch_statistics(
    images: torch.Tensor, patch: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (k,) and covariance (k, k) in float64 of the non-overlapping P×P patches of
    uint8 `images` after the model's normalisation; k = C·P·P in the order of a convolution
    kernel's flattened weights (channel, row, column)."""
    k = images.shape[1] * patch * patch
    total, count = torch.zeros(k, dtype=torch.float64), 0
    outer = torch.zeros(k, k, dtype=torch.float64)
    for chunk in images.split(CHUNK):
        x = normalize(chunk, mean, std)  # (b, C, S, S)
        p = F.unfold(x, patch, stride=patch).transpose(1, 2).reshape(-1, k).double()  # (b·L, k)
        total += p.sum(0)
        outer += p.T @ p
        count += len(p)
    mu = total / count
    return mu, outer / count - torch.outer(mu, mu)


def whitening(
    mu: torch.Tensor, cov: torch.Tensor, dim: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights (m, k) and bias (m,) of the m = min(dim, k) whitened principal directions,
    strongest first: w_i = v_i / sqrt(λ_i + eps·mean(λ)) and b_i = -w_i·μ."""
    lam, vecs = torch.linalg.eigh(cov)  # ascending
    lam, vecs = lam.flip(0).clamp(min=0), vecs.flip(1)
    m = min(dim, len(lam))
    w = vecs[:, :m].T / torch.sqrt(lam[:m] + eps * lam.mean())[:, None]  # (m, k)
    return w, -(w @ mu)


@torch.no_grad()
def whiten_patch_embed(
    model: nn.Module,
    images: torch.Tensor,
    eps: float = 1e-2,
) -> int:
    """Set `model`'s patch embedding from the whitened patches of uint8 `images` (already at the
    model's resolution); returns how many of its output channels were set."""
    embed = patch_embedding(model)
    c = model.cfg
    weight = embed.proj.weight  # (D, C, P, P)
    mu, cov = patch_statistics(images, embed.patch_size, tuple(c.mean), tuple(c.std))
    w, b = whitening(mu, cov, weight.shape[0], eps)
    m = len(w)
    weight[:m] = w.reshape(m, *weight.shape[1:]).to(weight.dtype)
    embed.proj.bias[:m] = b.to(weight.dtype)
    return m


def init_patch_embed(model: nn.Module, images: ImageSet, aug: AugConfig, n: int, seed: int) -> None:
    """`patch_init: whiten` for a new model: its patch embedding from the whitened patches of
    `n` training images drawn with `seed`, prepared by the evaluation preprocessing `aug`."""
    embed = patch_embedding(model)
    x = sample_images(images, n, aug, seed)
    m = whiten_patch_embed(model, x)
    log.info(
        "patch embedding: %d of %d channels start as the whitened patches of %d training images",
        m, embed.proj.weight.shape[0], len(x),
    )  # fmt: skip
