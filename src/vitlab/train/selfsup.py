"""Pre-training without labels: the paper's masked patch prediction and a masked autoencoder.

- `MaskedPatchPrediction` (section 4.6, Appendix B.1.2): 50% of the patch embeddings are
  corrupted (of those, 80% become a learnable [mask] embedding, 10% a random other patch's
  embedding, 10% stay as they are), and each corrupted patch's 3-bit mean colour (512 classes
  for RGB, 8 for one channel) is predicted from its output token; cross-entropy.
- `MaskedAutoencoder` (He et al. 2022): 75% of the patches are dropped, the encoder runs on the
  visible 25% only, and a small decoder (shared mask tokens, fixed 2-D sin-cos positions)
  reconstructs each masked patch's pixels, normalised per patch; mean squared error on the
  masked patches.

Each wraps a vitlab `VisionTransformer` (`.encoder`, the model that is published and
fine-tuned) with the objective's own parameters under one prefix (`mpp.*`, `mae.*`), and its
`forward(images)` returns the loss, so DDP/FSDP, autocast, the optimiser and the training
state treat it as any model. The images come normalised (mean/std of the encoder's config);
masks are drawn from torch's generator, which the training step seeds per step.

A hybrid's CNN stem sees the whole image, and its receptive field crosses patch borders: the
pixels of every corrupted or dropped patch are zeroed before the stem so that no masked
content leaks into the visible tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.layers import Block, posemb_sincos_2d

SelfSupervised = Literal["mpp", "mae"]
DEFAULT_MASK_RATIO = {"mpp": 0.5, "mae": 0.75}
# The prefix of each objective's own tensors in the training state and in a published
# checkpoint (`vitlab.weights.checkpoint.PRETRAINING_PARTS`, which loading drops).
PREFIXES = {"mpp": "mpp.", "mae": "mae."}


# ------------------------------------------------------------------------------ pixels
def patchify(images: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, s*s*C): each s x s cell's pixels, rows of cells in raster order
    (the order of the encoder's tokens), each cell's pixels as (row, column, channel)."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // s, s, W // s, s)  # (B, C, gh, s, gw, s)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // s) * (W // s), s * s * C)


def unpatchify(patches: torch.Tensor, s: int, grid: tuple[int, int], c: int) -> torch.Tensor:
    """The inverse of `patchify`: (B, N, s*s*C) -> (B, C, gh*s, gw*s)."""
    gh, gw = grid
    x = patches.reshape(len(patches), gh, gw, s, s, c)  # (B, gh, gw, s, s, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(len(patches), c, gh * s, gw * s)


def mean_colour_bins(images: torch.Tensor, s: int, bits: int = 3) -> torch.Tensor:
    """The masked-patch-prediction target (Appendix B.1.2): each s x s cell's mean colour of
    `images` in [0, 1], each channel quantised to `bits` bits, the channels' bins read as one
    number (red most significant): (B, C, H, W) -> (B, N) class indices in [0, 2**(bits*C))."""
    levels = 2**bits
    mean = F.avg_pool2d(images.float(), s)  # (B, C, gh, gw)
    bins = (mean * levels).floor().clamp(0, levels - 1).long()
    code = torch.zeros_like(bins[:, 0])
    for ch in range(images.shape[1]):
        code = code * levels + bins[:, ch]
    return code.flatten(1)  # (B, N)


def random_order(b: int, n: int, device: torch.device) -> torch.Tensor:
    """A random permutation of the n patches of each of b images: (B, N), per-row argsort of
    uniform noise (the first entries are the ones the objective masks or keeps)."""
    return torch.rand(b, n, device=device).argsort(dim=1)


def _zero_cells(images: torch.Tensor, hidden: torch.Tensor, s: int) -> torch.Tensor:
    """`images` with the s x s cells where `hidden` (B, N) is True set to 0 (the mean, in
    normalised units)."""
    B, _, H, W = images.shape
    cells = hidden.reshape(B, 1, H // s, W // s).to(images.dtype)  # (B, 1, gh, gw)
    keep = 1 - F.interpolate(cells, scale_factor=s, mode="nearest")  # (B, 1, H, W)
    return images * keep


def _check_encoder(encoder: nn.Module, objective: SelfSupervised) -> None:
    from vitlab.models.vit import VisionTransformer

    if not isinstance(encoder, VisionTransformer):
        name = type(encoder).__name__
        raise ConfigError(
            f"objective {objective} pre-trains a ViT or hybrid, and the model is a {name}: "
            "choose a ViT (`vitlab models` lists them)"
        )


def _unnormalise(x: torch.Tensor, cfg) -> torch.Tensor:
    """Normalised images back to [0, 1] with the encoder's mean and std."""
    shape = (1, -1, 1, 1)
    mean = torch.tensor(cfg.mean, device=x.device, dtype=torch.float32).reshape(shape)
    std = torch.tensor(cfg.std, device=x.device, dtype=torch.float32).reshape(shape)
    return x.float() * std + mean


# ------------------------------------------------------------------------------ mpp
class MPPHead(nn.Module):
    """The [mask] embedding and the linear classifier over mean-colour bins."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.head = nn.Linear(dim, classes)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)


class MaskedPatchPrediction(nn.Module):
    """Masked patch prediction (section 4.6): corrupt, encode, classify each corrupted patch's
    3-bit mean colour."""

    objective: SelfSupervised = "mpp"

    def __init__(self, encoder: nn.Module, mask_ratio: float = 0.5, bits: int = 3) -> None:
        super().__init__()
        _check_encoder(encoder, "mpp")
        self.encoder, self.mask_ratio, self.bits = encoder, mask_ratio, bits
        self.settings = {"mask_ratio": mask_ratio, "bits": bits}  # how to build it again
        c = encoder.cfg
        self.mpp = MPPHead(c.embed_dim, 2 ** (bits * c.in_chans))

    @property
    def cfg(self):
        return self.encoder.cfg

    def corrupt(self, n: int, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Which patches are corrupted and how: (B, N) bool `chosen` (exactly round(ratio * N)
        per image) and (B, N) int `how`: 0 [mask] embedding, 1 a random other patch, 2 kept."""
        k = max(1, round(self.mask_ratio * n))
        order = random_order(b, n, device)
        chosen = torch.zeros(b, n, dtype=torch.bool, device=device)
        chosen.scatter_(1, order[:, :k], True)
        r = torch.rand(b, n, device=device)
        how = (r >= 0.8).long() + (r >= 0.9).long()  # 80% / 10% / 10%
        return chosen, how

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> the mean cross-entropy over corrupted patches."""
        enc, s = self.encoder, self.encoder.cfg.feature_stride
        target = mean_colour_bins(_unnormalise(images, enc.cfg), s, self.bits)  # (B, N)
        B, N = target.shape
        chosen, how = self.corrupt(N, B, images.device)
        if enc.cfg.backbone is not None:
            images = _zero_cells(images, chosen, s)
        x, pos, cls = enc.embed_patches(images)  # (B, N, D)
        other = x.reshape(B * N, -1)[torch.randint(B * N, (B, N), device=x.device)]  # (B, N, D)
        mask = self.mpp.mask_token.to(x.dtype).expand(B, N, -1)
        x = torch.where((chosen & (how == 0)).unsqueeze(-1), mask, x)
        x = torch.where((chosen & (how == 1)).unsqueeze(-1), other, x)
        x = x + pos
        if cls is not None:
            x = torch.cat([cls.expand(B, -1, -1), x], dim=1)
        out = enc.forward_tokens(enc.pos_drop(x))[:, x.shape[1] - N :]  # (B, N, D)
        logits = self.mpp.head(out[chosen])  # (corrupted, classes)
        return F.cross_entropy(logits.float(), target[chosen])


# ------------------------------------------------------------------------------ mae
class MAEDecoder(nn.Module):
    """The MAE decoder: encoder tokens projected to its width, shared mask tokens for the dropped
    patches, fixed 2-D sin-cos positions, a few blocks, a linear map to each patch's pixels."""

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, pixels: int) -> None:
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, 4 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(
        self, latent: torch.Tensor, restore: torch.Tensor, grid: tuple[int, int], prefix: int
    ) -> torch.Tensor:
        """(B, prefix + kept, D_enc) encoded tokens, (B, N) `restore` order -> (B, N, pixels)."""
        y = self.embed(latent)  # (B, prefix + kept, dim)
        B, n = restore.shape
        vis = y[:, prefix:]
        masked = self.mask_token.to(y.dtype).expand(B, n - vis.shape[1], -1)
        full = torch.cat([vis, masked], dim=1)  # (B, N, dim) in shuffled order
        full = full.gather(1, restore.unsqueeze(-1).expand(-1, -1, full.shape[-1]))  # raster
        pos = posemb_sincos_2d(grid, full.shape[-1], dtype=full.dtype).to(full.device)
        full = torch.cat([y[:, :prefix], full + pos], dim=1)  # (B, prefix + N, dim)
        return self.pred(self.norm(self.blocks(full)))[:, prefix:]


class MaskedAutoencoder(nn.Module):
    """A masked autoencoder (He et al. 2022) around a vitlab ViT: drop, encode the visible
    patches, decode all, mean squared error on the dropped ones."""

    objective: SelfSupervised = "mae"

    def __init__(
        self,
        encoder: nn.Module,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        _check_encoder(encoder, "mae")
        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        self.settings = {"mask_ratio": mask_ratio, "decoder_dim": decoder_dim,
                         "decoder_depth": decoder_depth, "decoder_heads": decoder_heads,
                         "norm_pix_loss": norm_pix_loss}  # fmt: skip
        c = encoder.cfg
        pixels = c.feature_stride**2 * c.in_chans
        self.mae = MAEDecoder(c.embed_dim, decoder_dim, decoder_depth, decoder_heads, pixels)

    @property
    def cfg(self):
        return self.encoder.cfg

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, s*s*C) per-patch pixels, normalised per patch when `norm_pix_loss`."""
        t = patchify(images.float(), self.encoder.cfg.feature_stride)
        if self.norm_pix_loss:
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        return t

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, s*s*C) predicted pixels of every patch and the (B, N) mask (1: dropped)."""
        enc = self.encoder
        s = enc.cfg.feature_stride
        B, _, H, W = images.shape
        grid, n = (H // s, W // s), (H // s) * (W // s)
        keep = max(1, round(n * (1 - self.mask_ratio)))
        order = random_order(B, n, images.device)  # the first `keep` stay visible
        restore = order.argsort(dim=1)
        dropped = (restore >= keep).long()  # (B, N) in raster order
        if enc.cfg.backbone is not None:
            images = _zero_cells(images, dropped.bool(), s)
        x, pos, cls = enc.embed_patches(images)
        x = (x + pos).gather(1, order[:, :keep].unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        prefix = 0 if cls is None else cls.shape[1]
        if cls is not None:
            x = torch.cat([cls.expand(B, -1, -1), x], dim=1)  # (B, P + keep, D)
        latent = enc.forward_tokens(enc.pos_drop(x))
        return self.mae(latent, restore, grid, prefix), dropped

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> the mean squared error over dropped patches."""
        pred, dropped = self.reconstruct(images)
        err = ((pred.float() - self.targets(images)) ** 2).mean(dim=-1)  # (B, N)
        return (err * dropped).sum() / dropped.sum()


# ------------------------------------------------------------------------------ building
def build_pretrainer(
    encoder: nn.Module,
    objective: SelfSupervised,
    mask_ratio: float | None = None,
    bits: int = 3,
    decoder: tuple[int, int, int] = (128, 2, 4),
    norm_pix_loss: bool = True,
) -> MaskedPatchPrediction | MaskedAutoencoder:
    """The objective's module around `encoder` (`mask_ratio` None: the objective's default;
    `decoder`: MAE's width, depth and heads)."""
    ratio = DEFAULT_MASK_RATIO[objective] if mask_ratio is None else mask_ratio
    if objective == "mpp":
        return MaskedPatchPrediction(encoder, ratio, bits)
    dim, depth, heads = decoder
    return MaskedAutoencoder(encoder, ratio, dim, depth, heads, norm_pix_loss)


def is_pretrainer(model: nn.Module) -> bool:
    return isinstance(model, (MaskedPatchPrediction, MaskedAutoencoder))
