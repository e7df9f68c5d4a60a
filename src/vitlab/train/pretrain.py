"""What a run without labels (`objective: mpp | mae`, `vitlab pretrain`) adds to `fit`: the
model it trains (the encoder inside the objective's module), its validation pass (the objective's
loss on held-out images, with the same masks every time), the MAE reconstruction picture of each
epoch, and its checkpoint (the encoder, plus the objective's own tensors under their prefix)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from vitlab.data.sets import mix_seed
from vitlab.data.transforms import normalize
from vitlab.figures import save_figure
from vitlab.progress import progress_bar
from vitlab.runtime.device import unwrap_model
from vitlab.runtime.precision import autocast
from vitlab.train.config import TrainConfig
from vitlab.train.distributed import all_reduce_sum
from vitlab.train.selfsup import (
    PREFIXES,
    MaskedAutoencoder,
    build_pretrainer,
    is_pretrainer,
    patchify,
    unpatchify,
)
from vitlab.weights.checkpoint import save_checkpoint

log = logging.getLogger("vitlab")

RECONSTRUCTIONS = "reconstructions"  # the MAE pictures' folder in the run directory
SHOWN = 8  # images in each reconstruction picture


def wrap(cfg: TrainConfig, encoder: nn.Module) -> nn.Module:
    """`encoder` inside the module of `cfg.objective`; the encoder's parts that pre-training
    never reaches (its head, pre-logits and post-pooling norm) are frozen, so that DDP finds
    every trained parameter used."""
    for part in ("head", "head_dist", "pre_logits", "fc_norm"):
        if hasattr(encoder, part):  # head_dist: a DeiT layout's distillation head
            getattr(encoder, part).requires_grad_(False)
    decoder = (cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)
    return build_pretrainer(
        encoder, cfg.objective, cfg.mask_ratio, cfg.mpp_bits, decoder, cfg.norm_pix_loss
    )


def encoder_of(model: nn.Module) -> nn.Module:
    """The model a run publishes: the encoder of a pre-training module, else the model."""
    model = unwrap_model(model)
    return model.encoder if is_pretrainer(model) else model


def save_pretrained_weights(model: nn.Module, path: Path) -> Path:
    """The encoder as a self-describing vitlab checkpoint, with the objective's tensors kept in
    the file under their prefix (`mae.*`, `mpp.*`): `load_checkpoint`, fine-tuning and export
    drop them and say so; pre-training resumes from the run's `last.state.pt`."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(PREFIXES[model.objective])}
    return save_checkpoint(model.encoder, path, extra=own)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, loader: DataLoader, cfg: TrainConfig, ctx, desc: str = "val"
) -> float:
    """The objective's mean loss over `loader`'s images (summed over every process), each batch
    masked from its own fixed seed so that passes compare."""
    was = model.training
    model.eval()
    dev, total, count = ctx.info.device, torch.zeros((), dtype=torch.float64), 0
    bar = progress_bar(loader, disable=not ctx.info.main, leave=False, desc=desc, unit="batch")
    for i, (x, _, _) in enumerate(bar):
        if len(x) == 0:
            continue
        torch.manual_seed(mix_seed(cfg.seed, i, ctx.info.rank, 2))
        x = normalize(x.to(dev, non_blocking=True), ctx.mean, ctx.std)
        with autocast(dev, cfg.precision):
            loss = model(x)
        total += float(loss) * len(x)
        count += len(x)
    model.train(was)
    sums = all_reduce_sum(torch.tensor([float(total), count], dtype=torch.float64))
    return float(sums[0] / max(1.0, float(sums[1])))


@torch.no_grad()
def save_reconstructions(
    model: nn.Module, images: torch.Tensor, ctx, path: Path, write: bool = True
) -> Path | None:
    """MAE's picture: per image (rows), the original, the visible patches (dropped ones grey)
    and the reconstruction (visible patches pasted back), from uint8 `images`, fixed masks.

    Every rank calls it (an FSDP forward is a collective); only a rank with `write` draws.
    The masks come from a fixed seed without touching the training's random stream."""
    from vitlab.figures import new_grid

    mae: MaskedAutoencoder = unwrap_model(model)
    was = mae.training
    mae.eval()
    x = normalize(images.to(ctx.info.device), ctx.mean, ctx.std)
    cuda = [ctx.info.device] if ctx.info.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)
        pred, dropped = mae.reconstruct(x)
    mae.train(was)
    if not write:
        return None
    s, c = mae.cfg.feature_stride, mae.cfg.in_chans
    pred = pred.float()
    if mae.norm_pix_loss:  # back to pixels with each patch's own mean and spread
        t = patchify(x.float(), s)
        pred = pred * (t.var(-1, keepdim=True) + 1e-6).sqrt() + t.mean(-1, keepdim=True)
    grid = (x.shape[-2] // s, x.shape[-1] // s)
    drop = unpatchify(dropped[..., None].float().expand(-1, -1, s * s * c), s, grid, c)
    recon = unpatchify(pred, s, grid, c) * drop + x * (1 - drop)
    rows = [_to_pixels(v, ctx) for v in (x, x * (1 - drop) + drop * _grey(x, ctx), recon)]
    fig, axes = new_grid(len(x), 3, size=1.3)
    for r in range(len(x)):
        for col, (title, img) in enumerate(zip(("original", "visible", "reconstruction"), rows)):
            ax = axes[r, col]
            ax.imshow(img[r], cmap="gray" if c == 1 else None, vmin=0, vmax=1)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=8)
    return save_figure(fig, path)


def _grey(x: torch.Tensor, ctx) -> torch.Tensor:
    """A mid-grey image in normalised units."""
    m = torch.tensor(ctx.mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(ctx.std, device=x.device).view(1, -1, 1, 1)
    return (0.5 - m) / s


def _to_pixels(x: torch.Tensor, ctx):
    """Normalised (B, C, H, W) -> a numpy (B, H, W[, C]) array in [0, 1] for imshow."""
    m = torch.tensor(ctx.mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(ctx.std, device=x.device).view(1, -1, 1, 1)
    img = (x * s + m).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, C)
    return img[..., 0] if img.shape[-1] == 1 else img


def reconstruction_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / RECONSTRUCTIONS / f"epoch_{epoch:03d}.png"


def check_objective(cfg: TrainConfig, model_cfg) -> None:
    """A self-supervised objective that does not fit the model, said before anything runs: a
    ResNet (no patch tokens), an image its patches do not tile, too few patches to mask."""
    from vitlab.errors import ConfigError
    from vitlab.models.config import ViTConfig
    from vitlab.train.selfsup import DEFAULT_MASK_RATIO

    o = cfg.objective
    if o == "supervised":
        return
    if not isinstance(model_cfg, ViTConfig):
        raise ConfigError(
            f"objective {o} masks the patch tokens of a ViT or hybrid, and "
            f"{cfg.init_from or cfg.model} is a ResNet: choose a ViT (`vitlab models` lists them)"
        )
    s, size = model_cfg.feature_stride, model_cfg.img_size
    if size % s:
        raise ConfigError(
            f"objective {o} predicts each {s}x{s} patch, and {s} px patches do not tile "
            f"{size} px images: set img_size to a multiple of {s}"
        )
    n = (size // s) ** 2
    ratio = DEFAULT_MASK_RATIO[o] if cfg.mask_ratio is None else cfg.mask_ratio
    if round(n * ratio) < 1 or round(n * ratio) >= n:
        raise ConfigError(
            f"objective {o}: mask_ratio {ratio} of {n} patches masks {round(n * ratio)}; "
            "choose a ratio that masks at least one patch and leaves one visible"
        )
