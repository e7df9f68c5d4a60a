"""The building blocks of a Vision Transformer (paper section 3.1, equations 1-4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.weak import WeakIdKeyDictionary
from torchvision.ops import StochasticDepth

from vitlab.errors import ConfigError


def _onednn_linear_op():
    """oneDNN's linear with a fused activation (`mkldnn::_linear_pointwise`, the kernel
    torch.compile itself emits for CPU linears), or None where this PyTorch build lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


_ONEDNN_LINEAR = _onednn_linear_op()
_ONEDNN_BF16 = _ONEDNN_LINEAR is not None and torch.ops.mkldnn._is_mkldnn_bf16_supported()
_ONEDNN_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if _ONEDNN_LINEAR else None


def onednn_linear(dtype: torch.dtype):
    """oneDNN's CPU linear `op(x, weight, bias, attr, scalars, algorithm)` = x W^T + b (with the
    activation `attr` fused) where it handles `dtype` (fp32, and bf16 where the CPU has it),
    else None."""
    if dtype == torch.float32 or (dtype == torch.bfloat16 and _ONEDNN_BF16):
        return _ONEDNN_LINEAR
    return None


def _onednn_applies(x: torch.Tensor, layer: nn.Linear) -> bool:
    """Inference on the CPU in a dtype oneDNN handles, with the weights in the input's dtype,
    outside autocast, torch.compile (which fuses on its own) and dispatch modes such as
    `FlopCounterMode` (which count the standard operators)."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or onednn_linear(x.dtype) is None:
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False
    if _get_current_dispatch_mode() is not None:
        return False
    return layer.weight.dtype == x.dtype


def linear(x: torch.Tensor, layer: nn.Linear, act: str = "") -> torch.Tensor:
    """`act(layer(x))` with act in "", "gelu" (erf) or "gelu_tanh".

    CPU inference goes through oneDNN with the bias and the GELU fused into the matmul: measured
    on ViT-S/16 blocks, fc1 + GELU took 18 ms instead of 33 ms (fp32) and a plain linear about
    9% less than `F.linear`, which adds the bias in a separate pass; inside `PackedWeights` the
    weight is packed for oneDNN once rather than on every call. Everything else (training, GPUs,
    autocast, compile) takes `F.linear` and `F.gelu`; the results agree to rounding."""
    if _onednn_applies(x, layer):
        attr, algo = {"": ("none", ""), "gelu": ("gelu", "none")}.get(act, ("gelu", "tanh"))
        return _ONEDNN_LINEAR(x, packed_weight(layer.weight), layer.bias, attr, [], algo)
    y = F.linear(x, layer.weight, layer.bias)
    return F.gelu(y, approximate="tanh" if act == "gelu_tanh" else "none") if act else y


class PackedWeights:
    """`with PackedWeights():` CPU inference inside the block packs each linear weight into
    oneDNN's blocked layout once and reuses it, instead of oneDNN reordering every weight on
    every call: ViT-S/16 and B/16 inference ran 4-6% faster on a 2-core Xeon. The packed copies
    (the linear weights' memory once more) live as long as this object; the same object can be
    entered again, e.g. once per batch.

    `vitlab eval`, `predict`, validation passes and `vitlab bench` use it. A weight changed
    inside the block through the usual paths (an optimiser step, `load_state_dict`, `.to()`) is
    repacked; one written behind autograd's back (`p.data.copy_(...)`, or FSDP's all-gather
    into the same storage) would not be seen, so scope it to loops whose weights stay fixed."""

    def __init__(self) -> None:
        # weight -> (an alias holding its storage, its version when packed, the packed copy)
        self._cache = WeakIdKeyDictionary()
        self._outer: list[WeakIdKeyDictionary | None] = []

    def __enter__(self) -> PackedWeights:
        global _ACTIVE_PACKS
        self._outer.append(_ACTIVE_PACKS)
        _ACTIVE_PACKS = self._cache
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE_PACKS
        _ACTIVE_PACKS = self._outer.pop()


_ACTIVE_PACKS: WeakIdKeyDictionary | None = None


def packed_weight(w: torch.Tensor) -> torch.Tensor:
    """`w` in oneDNN's blocked layout, from the active `PackedWeights` cache (packed on first
    use, again when the weight's storage, dtype, shape or version counter changes; the alias
    kept beside it holds the old storage, so a new weight cannot reuse its address unnoticed);
    `w` itself outside such a block."""
    cache = _ACTIVE_PACKS
    if cache is None or _ONEDNN_PACK is None:
        return w
    hit = cache.get(w)
    if hit is not None:
        held, version, packed = hit
        same = held.data_ptr() == w.data_ptr() and held.dtype == w.dtype
        if same and held.shape == w.shape and version == w._version:
            return packed
    held = w.detach()
    packed = _ONEDNN_PACK(held, None)
    cache[w] = (held, w._version, packed)
    return packed


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
    explicit path that materialises the softmax so it can be inspected.
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
        if return_attn or _explicit_is_faster(q):
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
            attn = attn.softmax(dim=-1)
            x = F.dropout(attn, drop, self.training) @ v  # (B, h, N, hd)
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, h, N, hd)
        # SDPA on the CPU writes its output as (B, N, h, hd) already: this reshape is a view.
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        x = self.proj_drop(linear(x, self.proj))
        return (x, attn) if return_attn else x


def _explicit_is_faster(q: torch.Tensor) -> bool:
    """Whether plain matmul-softmax-matmul beats `scaled_dot_product_attention` here.

    On the CPU the fused kernel's backward pass in bf16/fp16 is slower than two batched matmuls
    and a softmax: whole training steps ran 1.1-2.1x faster with the explicit path on
    ViT-Ti/S/B/16 and the 28 px Fashion-MNIST variant (benchmarks/speed.py). So a
    reduced-precision CPU training step takes it; fp32 and inference keep the fused kernel,
    which was as fast or faster there.
    """
    if q.device.type != "cpu" or not q.requires_grad:
        return False
    return q.dtype in (torch.bfloat16, torch.float16)


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
        self.drop_path1 = StochasticDepth(drop_path, "row") if drop_path else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, act, drop)
        self.drop_path2 = StochasticDepth(drop_path, "row") if drop_path else nn.Identity()

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
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = posemb.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1,D,h,w)
    kw = {} if mode == "nearest" else {"align_corners": align_corners, "antialias": antialias}
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, **kw)  # (1, D, h', w')
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(posemb.dtype)  # (1, h'*w', D)
    return torch.cat([prefix, grid], dim=1)
