"""The building blocks of a Vision Transformer (paper section 3.1, equations 1-4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError
from vitlab.runtime.kernels import AttentionPath, attention_path, linear


class PatchEmbed(nn.Module):
    """Split an image into P×P patches and project each linearly to D (equation 1).

    A convolution with kernel = stride = P is exactly "flatten each patch, multiply by E".
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/P, W/P, D)."""
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ConfigError(
                f"input of {x.shape[-2]}x{x.shape[-1]} px is not divisible by the patch size {p}; "
                f"resize or crop images to a multiple of {p}"
            )
        return self.proj(x).permute(0, 2, 3, 1)  # (B, gh, gw, D)


class Attention(nn.Module):
    """Multi-head self-attention (Appendix A, equations 5-8) with one fused qkv projection.

    The default path is `scaled_dot_product_attention`; `forward(x, return_attn=True)` takes an
    explicit path that materialises the softmax so it can be inspected. Where matmul, softmax,
    matmul is faster than the fused kernel (a bf16 training step on the CPU), that path runs
    too: which one depends on the device, the dtype (autocast's, known only in the forward) and
    whether gradients flow, so `path_for` picks it (`runtime.kernels.attention_path`) the first
    time the module meets each such combination and keeps the answer (`self._paths`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # (device type, dtype, gradients) -> the path chosen for them
        self._paths: dict[tuple[str, torch.dtype, bool], AttentionPath] = {}

    def path_for(self, q: torch.Tensor) -> AttentionPath:
        """The attention kernel for queries like `q`, chosen once per (device type, dtype,
        gradients) this module meets and then read back. `torch.compile` and `torch.export`
        choose once while tracing and keep the choice in their graph; they leave `_paths`
        alone (a write there would be a side effect in the graph, which activation
        checkpointing refuses)."""
        if torch.compiler.is_compiling():
            return attention_path(q.device, q.dtype, q.requires_grad)
        key = (q.device.type, q.dtype, q.requires_grad)
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = attention_path(q.device, q.dtype, q.requires_grad)
        return path

    def forward(
        self, x: torch.Tensor, return_attn: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        B, N, D = x.shape
        qkv = linear(x, self.qkv).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B,N,3,h,hd)
        # Views of the projection; unbinding dim 2 (not a permuted dim 0) makes the backward
        # pass stack the three gradients straight into the (B, N, 3D) layout the qkv linear's
        # backward reads: one copy instead of two, 1-2% of an fp32 training step.
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # 3 x (B, h, N, hd)
        drop = self.attn_drop if self.training else 0.0
        if return_attn or self.path_for(q) == "explicit":
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
            attn = attn.softmax(dim=-1)
            x = F.dropout(attn, drop, self.training) @ v  # (B, h, N, hd)
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, h, N, hd)
        # SDPA on the CPU writes its output as (B, N, h, hd) already: this reshape is a view.
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        x = self.proj_drop(linear(x, self.proj))
        return (x, attn) if return_attn else x


class Mlp(nn.Module):
    """The transformer MLP: Linear(D, mlp_dim) -> GELU -> Linear(mlp_dim, D), with dropout."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = "gelu_tanh" if act == "gelu_tanh" else "gelu"  # exact (erf) or tanh GELU
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = linear(x, self.fc1, self.act)  # fc1 and the GELU in one kernel where it can
        return self.drop2(linear(self.drop1(x), self.fc2))

    def extra_repr(self) -> str:
        return f"act={self.act}"


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a residual branch for a whole
    sample with probability `p` and scale the kept ones by 1 / (1 - p); identity in eval."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """A pre-norm encoder block: x + MSA(LN(x)), then x + MLP(LN(x)) (equations 2-3)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        act: str = "gelu",
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path1 = DropPath(drop_path) if drop_path else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, act, drop)
        self.drop_path2 = DropPath(drop_path) if drop_path else nn.Identity()

    def forward(
        self, x: torch.Tensor, return_attn: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if return_attn:
            y, attn = self.attn(self.norm1(x), return_attn=True)
        else:
            y = self.attn(self.norm1(x))
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return (x, attn) if return_attn else x


def posemb_sincos_2d(
    grid: tuple[int, int],
    dim: int,
    temperature: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (Appendix D.4), as big_vision defines them.

    Returns (1, gh * gw, dim): a quarter of the channels each for sin(x), cos(x), sin(y), cos(y)
    at frequencies 1 / temperature ** (i / (dim/4 - 1)).
    """
    gh, gw = grid
    y, x = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    quarter = dim // 4
    omega = torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1)
    omega = 1.0 / temperature**omega  # (dim/4,)
    y = y.flatten().double()[:, None] * omega[None, :]  # (N, dim/4)
    x = x.flatten().double()[:, None] * omega[None, :]  # (N, dim/4)
    pe = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # (N, dim)
    return pe.to(dtype)[None]


def resample_pos_embed(
    posemb: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = True,
    align_corners: bool | None = None,
) -> torch.Tensor:
    """Resample (1, prefix + gh*gw, D) position embeddings over the 2-D patch grid.

    The prefix (class-token) entries are kept as they are (paper section 3.2, "2D interpolation of
    the pre-trained position embeddings, according to their location in the original image").
    """
    n_old = posemb.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(n_old)
        if side * side != n_old:
            raise ConfigError(
                f"{n_old} position embeddings do not form a square grid; give old_grid"
            )
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid) and not torch.compiler.is_exporting():
        return posemb  # (exporting, the grid may be symbolic: the interpolation is traced)
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = posemb.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1,D,h,w)
    kw = {} if mode == "nearest" else {"align_corners": align_corners, "antialias": antialias}
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, **kw)  # (1, D, h', w')
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(posemb.dtype)  # (1, h'*w', D)
    return torch.cat([prefix, grid], dim=1)
