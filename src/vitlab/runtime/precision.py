"""How fast matmuls run here and what precision to run in: the matmul probes behind the
benchmarks' peak (`MatmulProbe`, `matmul_peak_gflops`, `interleaved_rates`), `auto` precision
for training (`resolve_precision`) and inference (`inference_precision`, `in_precision`), and
mixed precision (`autocast`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from vitlab.errors import ConfigError
from vitlab.runtime.device import synchronize
from vitlab.runtime.kernels import onednn_linear

log = logging.getLogger("vitlab")

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


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
    if not native_bf16(device):
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


def native_bf16(device: torch.device) -> bool:
    """Whether this CPU runs bf16 matmuls natively (oneDNN has a bf16 linear: AVX512-BF16 or
    AMX); elsewhere bf16 is emulated and never chosen by `auto`."""
    return device.type == "cpu" and onednn_linear(torch.bfloat16) is not None


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


# ------------------------------------------------------------------------ inference precision
InferencePrecision = Literal["fp32", "bf16", "auto"]
INFERENCE_PRECISIONS = ("fp32", "bf16", "auto")
_chosen: dict[str, str] = {}  # device type -> what `auto` chose there, once per process


def inference_precision(
    precision: str,
    device: torch.device,
    *,
    read: Callable[[str], float] | None = None,
    rounds: int = 7,
) -> str:
    """The precision `predict`, `eval`, `serve` and `bench` run a model in: fp32 or bf16 as
    asked, or for `auto` what training's `auto` would pick on this device (bf16 where its
    matmuls are measured clearly faster, `resolve_precision`), measured once per process and
    device type and logged the first time."""
    if precision not in INFERENCE_PRECISIONS:
        raise ConfigError(
            f"precision {precision!r} is not one of {', '.join(INFERENCE_PRECISIONS)} "
            "(inference runs in fp32 or bf16; fp16 is for training on a GPU)"
        )
    if precision != "auto":
        return precision
    if device.type not in _chosen:
        _chosen[device.type] = resolve_precision("auto", device, read=read, rounds=rounds)
    return _chosen[device.type]


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model's inputs should come in: its floating weights' (fp32 without any,
    as an ONNX Runtime session takes)."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return torch.float32 if p is None else p.dtype


def in_precision(model: nn.Module, precision: str) -> nn.Module:
    """The model to run inference with in `precision` ("fp32" or "bf16"; resolve "auto" with
    `inference_precision` first): `model` itself in fp32; in bf16 a copy with bf16 weights,
    which takes bf16 inputs (`weights_dtype`) and runs the packed oneDNN linears in bf16. That
    was 1.3-1.9x faster than fp32 autocast on an AMD EPYC with AVX512-BF16 (ViT-S/16 batch 8,
    the demo's ViT batch 256), where autocast leaves the packed path. `model` is not changed.
    A graph whose runtime compiles it in bf16 (an OpenVINO IR, `with_precision`) is compiled
    so; one without floating weights otherwise (an ONNX graph) runs as it was exported, and
    asking it for bf16 is an error."""
    if precision == "fp32":
        return model
    if precision != "bf16":
        raise ConfigError(f"inference precision must be fp32 or bf16, got {precision!r}")
    if hasattr(model, "with_precision"):  # a graph its runtime compiles in bf16 (OpenVINO)
        return model.with_precision(precision)
    if not any(p.is_floating_point() for p in model.parameters()):
        raise ConfigError(
            f"{type(model).__name__} runs its graph as it was exported and cannot run in "
            "bf16: use precision fp32, or a PyTorch checkpoint (.safetensors) for bf16"
        )
    return copy.deepcopy(model).to(torch.bfloat16)
