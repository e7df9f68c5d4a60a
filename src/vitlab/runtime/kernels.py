"""The kernels the paper's blocks in `vitlab.models.layers` call: oneDNN's CPU linear with the
bias and GELU fused (`linear`), its packed weights (`PackedWeights`), and the rule that picks
the attention path (`attention_path`). This is the only part of `vitlab.runtime` the models
import; nothing here changes what a model computes, only how fast.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.weak import WeakIdKeyDictionary

AttentionPath = Literal["fused", "explicit"]


# ------------------------------------------------------------------------- oneDNN linears
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

    def __exit__(self, *exc: object) -> None:
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


# ------------------------------------------------------------------------- attention path
def attention_path(device: torch.device, dtype: torch.dtype, requires_grad: bool) -> AttentionPath:
    """The faster attention kernel for queries on `device` in `dtype` (with gradients to
    compute or not): "fused" (`scaled_dot_product_attention`) or "explicit" (matmul, softmax,
    matmul). `Attention` asks once per (device, dtype, gradients) it meets and keeps the answer.

    On the CPU the fused kernel's backward pass in bf16/fp16 is slower than two batched matmuls
    and a softmax: whole training steps ran 1.1-2.1x faster with the explicit path on
    ViT-Ti/S/B/16 and the 28 px Fashion-MNIST variant (benchmarks/speed.py). So a
    reduced-precision CPU training step takes it; fp32 and inference keep the fused kernel,
    which was as fast or faster there.
    """
    reduced = dtype in (torch.bfloat16, torch.float16)
    return "explicit" if device.type == "cpu" and requires_grad and reduced else "fused"
