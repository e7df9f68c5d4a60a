"""How a model runs on this machine: device, precision and autocast, oneDNN dispatch and weight
packing, the allocator, `torch.compile`, and the matmul peak the benchmarks compare against.

Nothing here changes what a model computes, only where and how fast: the paper's blocks in
`vitlab.models.layers` call `linear` and `explicit_attention_is_faster`, and every loop that runs
a model (training, evaluation, prediction, benchmarks) takes its device, precision and autocast
from here.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.weak import WeakIdKeyDictionary

from vitlab.errors import ConfigError

log = logging.getLogger("vitlab")

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


# --------------------------------------------------------------------------------- devices
def pick_device(name: str | None = "auto", local_rank: int = 0) -> torch.device:
    """`auto` (or None): this process's GPU (`cuda:local_rank`) when CUDA is available, else
    the CPU; otherwise the named device, checked: a one-line error for a name torch does not
    know, a device type vitlab does not run on, or a GPU that is not there."""
    if name in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"--device {name!r} is not a device name; use cpu, cuda or auto"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r} is not supported; use cpu, cuda or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA GPU is visible; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"--device {name}: only {count} GPU(s) visible (cuda:0..{count - 1})")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a timer measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_info()["model"]


def cpu_info() -> dict[str, Any]:
    """CPU model, logical cores and the bf16 matrix features /proc/cpuinfo advertises."""
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": set()}
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and info["model"] in ("", platform.machine()):
                info["model"] = value.strip()
            elif key.strip() == "flags" and not info["flags"]:
                info["flags"] = set(value.split())
    flags = info.pop("flags")
    info["cores"] = os.cpu_count() or 1
    info["avx512_bf16"] = "avx512_bf16" in flags
    info["amx_bf16"] = "amx_bf16" in flags
    info["amx_fp16"] = "amx_fp16" in flags
    return info


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP/FSDP wrappers and `torch.compile`."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def model_device(model: nn.Module) -> torch.device:
    """Where a model's weights live; the CPU for one that holds none (an ONNX Runtime model)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


# ------------------------------------------------------------------------------- allocator
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks for reuse instead of returning them to the OS.

    By default every large tensor a forward pass frees goes back to the kernel and the next one
    is faulted in again page by page (about 56,000 page faults per ViT-S/16 batch of 16 in
    bf16); keeping them made CPU inference ~15% faster and the Fashion-MNIST presets' training
    steps 14% faster. It is process-wide, so it helps vitlab and timm alike. Returns whether
    glibc accepted the settings.
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 or libc.mallopt(m_mmap_threshold, 32 << 20)
    return bool(ok) and libc.mallopt(m_trim_threshold, 1 << 30) == 1


# ------------------------------------------------------------------------ oneDNN linears
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


def explicit_attention_is_faster(q: torch.Tensor) -> bool:
    """Whether plain matmul-softmax-matmul beats `scaled_dot_product_attention` for `q`.

    On the CPU the fused kernel's backward pass in bf16/fp16 is slower than two batched matmuls
    and a softmax: whole training steps ran 1.1-2.1x faster with the explicit path on
    ViT-Ti/S/B/16 and the 28 px Fashion-MNIST variant (benchmarks/speed.py). So a
    reduced-precision CPU training step takes it; fp32 and inference keep the fused kernel,
    which was as fast or faster there.
    """
    if q.device.type != "cpu" or not q.requires_grad:
        return False
    return q.dtype in (torch.bfloat16, torch.float16)


# ------------------------------------------------------------------------- matmul speed
class MatmulProbe:
    """Times square `size`^3 matmuls in any dtype on `device`. On the CPU both BLAS (`torch.mm`)
    and oneDNN (the kernel vitlab's inference linears use) run and the faster counts, so no
    model can exceed the peak it is held to."""

    def __init__(self, device: torch.device, size: int | None = None) -> None:
        self.device = device
        self.size = size or (8192 if device.type == "cuda" else 2048)
        self._operands: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def _kernels(self, dtype: torch.dtype) -> list[Callable[[], torch.Tensor]]:
        """The matmuls to time in `dtype`, on operands made (and run once, to warm up: the
        first call allocates and packs) the first time `dtype` is asked for."""
        fresh = dtype not in self._operands
        if fresh:
            n, dev = self.size, self.device
            self._operands[dtype] = tuple(torch.randn(n, n, device=dev).to(dtype) for _ in "ab")
        a, b = self._operands[dtype]
        kernels = [lambda: torch.mm(a, b)]
        fast = onednn_linear(dtype) if self.device.type == "cpu" else None
        if fast is not None:
            kernels.append(lambda: fast(a, b, None, "none", [], ""))  # a @ b.T
        if fresh:
            with torch.inference_mode():
                for kernel in kernels:
                    kernel()
        return kernels

    def gflops(self, dtype: torch.dtype) -> float:
        """GFLOP/s of one timed run of each kernel (the faster one)."""
        best = 0.0
        with torch.inference_mode():
            for kernel in self._kernels(dtype):
                synchronize(self.device)
                start = time.perf_counter()
                kernel()
                synchronize(self.device)
                best = max(best, 2 * self.size**3 / (time.perf_counter() - start) / 1e9)
        return best


def matmul_peak_gflops(
    device: torch.device, dtype: torch.dtype, size: int | None = None, reps: int = 5
) -> float:
    """The machine's practical matmul peak in `dtype`: the median GFLOP/s of `reps` timed runs
    of a square `size`^3 matmul (`MatmulProbe`)."""
    probe = MatmulProbe(device, size)
    return statistics.median(probe.gflops(dtype) for _ in range(reps))


def interleaved_rates(
    read: Callable[[str], float], names: tuple[str, ...], rounds: int
) -> dict[str, list[float]]:
    """`rounds` readings of each name, taken in turns with the order flipping every round
    (a b, b a, a b, ...), so a slow moment of the machine falls on both alike."""
    readings: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            readings[name].append(read(name))
    return readings


# ------------------------------------------------------------------------------- precision
BF16_MARGIN = 1.2  # bf16 must be this much faster than fp32 to be chosen


def resolve_precision(
    precision: str,
    device: torch.device,
    resumed: str | None = None,
    *,
    read: Callable[[str], float] | None = None,
    rounds: int = 7,
) -> str:
    """`auto` -> "bf16" where bf16 matmuls are clearly faster than fp32 here, else "fp32"; any
    other value is returned as it is. A resumed run keeps `resumed`, the precision its first
    part chose (timings near the threshold could otherwise choose differently and change what
    the run computes).

    bf16 autocast is not faster on every CPU: it was 1.5x faster for the demo on an AMD EPYC
    with AVX512-BF16 (bf16 matmul peak 434 against 218 GFLOP/s in fp32), but 0.65x on an Intel
    Xeon VM whose AMX is not exposed (170 against 330), and CPUs without AVX512-BF16 emulate it.
    So the CPU times 1024^3 matmuls in both, `rounds` readings each taken in turns
    (`interleaved_rates`), and compares the medians with a margin of `BF16_MARGIN`: one busy
    moment (a compiler pool starting) cannot flip the choice, as a single fp32-then-bf16 probe
    did. `read(name)` is one GFLOP/s reading (tests pass their own). A GPU takes bf16 where it
    supports it. Under torchrun, rank 0 decides for every process."""
    if precision != "auto":
        return precision
    if resumed is not None:
        return resumed
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu" or onednn_linear(torch.bfloat16) is None:
        return "fp32"
    choice = None
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        choice = _measure_choice(device, read, rounds)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shared = [choice]
        dist.broadcast_object_list(shared, src=0)  # gloo on the CPU
        choice = shared[0]
    return choice


def _measure_choice(device: torch.device, read: Callable[[str], float] | None, rounds: int) -> str:
    if read is None:
        probe = MatmulProbe(device, size=1024)
        read = lambda name: probe.gflops(DTYPES[name])  # noqa: E731
    readings = interleaved_rates(read, ("fp32", "bf16"), rounds)
    fp32, bf16 = (statistics.median(readings[n]) for n in ("fp32", "bf16"))
    choice = "bf16" if bf16 > BF16_MARGIN * fp32 else "fp32"
    spread = {n: f"{min(v):.0f}-{max(v):.0f}" for n, v in readings.items()}
    log.info(
        "precision auto: %s (median matmul GFLOP/s over %d interleaved readings: bf16 %.0f "
        "[%s], fp32 %.0f [%s]; bf16 needs %.1fx fp32)",
        choice, rounds, bf16, spread["bf16"], fp32, spread["fp32"], BF16_MARGIN,
    )  # fmt: skip
    return choice


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision: fp32 weights, matmuls in bf16/fp16 (a no-op for fp32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# -------------------------------------------------------------------------------- compile
def can_compile(device: torch.device) -> bool:
    """Whether `torch.compile` can work here: on the CPU its code generator needs a C++
    compiler. Without one the run goes on uncompiled (same results, slower) with a warning."""
    if device.type != "cpu":
        return True
    names = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    if any(name and shutil.which(name) for name in names):
        return True
    log.warning(
        "compile: no C++ compiler found (g++, clang++ or $CXX), which torch.compile needs on "
        "the CPU; training without it (same results, slower). Install g++ to compile, or "
        "pass --set compile=false to silence this"
    )
    return False
