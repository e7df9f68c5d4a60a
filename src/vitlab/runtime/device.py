"""Where and how a model runs on this machine: the device (`pick_device`, `model_device`,
`synchronize`, the CPU's name and features), the plain model inside DDP/FSDP and
`torch.compile` (`unwrap_model`), the allocator (`keep_freed_memory`) and whether
`torch.compile` can work here (`can_compile`).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.errors import ConfigError

log = logging.getLogger("vitlab")


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
