"""Reading and writing weight files safely: no arbitrary unpickling, atomic writes."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vitlab.errors import CheckpointError
from vitlab.files import atomic_write

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# Wrappers that training scripts put around a state dict, outermost first.
_WRAPPER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "module", "params")
_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class RawCheckpoint:
    """The tensors of a weight file as they are stored, before any key mapping."""

    path: Path
    tensors: dict[str, Any]  # name -> torch.Tensor (or numpy array for .npz files)
    metadata: dict[str, str] = field(default_factory=dict)
    kind: str = "safetensors"  # "safetensors" | "pickle" | "npz" | "directory"
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. a Hugging Face config.json

    def keys(self) -> set[str]:
        return set(self.tensors)


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write tensors (made contiguous, on the CPU) to `path` atomically."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata))


def read_safetensors(path: Path) -> RawCheckpoint:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable .safetensors file ({e})") from None
    return RawCheckpoint(path, tensors, meta, "safetensors")


def read_pickle(path: Path) -> RawCheckpoint:
    """A PyTorch .pth/.bin file, loaded with `weights_only=True` (tensors and plain containers)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"{path} holds Python objects besides tensors ({found.group(1)}), and vitlab "
                "never unpickles arbitrary objects; "
                "re-save it as a plain state_dict (torch.save(model.state_dict(), ...)) or as "
                ".safetensors"
            ) from None
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (its pickle is not valid)"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({e})") from None
    return RawCheckpoint(path, unwrap_state_dict(obj, path), {}, "pickle")


def read_npz(path: Path) -> RawCheckpoint:
    try:
        with np.load(str(path), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a readable .npz file ({e})") from None
    return RawCheckpoint(path, arrays, {}, "npz")


def unwrap_state_dict(obj: Any, path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor dict inside common training-script wrappers; strip DDP/compile prefixes."""
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not _is_tensor_dict(obj):
        raise CheckpointError(
            f"{path} does not contain a state dict (a mapping of parameter names to tensors)"
        )
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(d: dict) -> bool:
    values = list(d.values())
    return bool(values) and sum(isinstance(v, torch.Tensor) for v in values) >= len(values) / 2


def read_raw(path: str | Path) -> RawCheckpoint:
    """Read any supported weight file or directory without interpreting its keys."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; check the path")
    if path.is_dir():
        return read_directory(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); it is not a checkpoint")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix == ".npz":
        return read_npz(path)
    if suffix in PICKLE_SUFFIXES:
        return read_pickle(path)
    with open(path, "rb") as f:  # unknown suffix: sniff the first bytes
        head = f.read(8)
    if head[:2] == b"PK":
        return read_npz(path) if zipfile.is_zipfile(path) and _is_npz(path) else read_pickle(path)
    try:
        return read_safetensors(path)
    except CheckpointError:
        raise CheckpointError(
            f"{path} is not a checkpoint vitlab can read; expected .safetensors, .npz "
            f"(Google), {', '.join(PICKLE_SUFFIXES)} (PyTorch) or a Hugging Face directory"
        ) from None


def _is_npz(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def read_directory(path: Path) -> RawCheckpoint:
    """A model directory (Hugging Face `save_pretrained` layout, or vitlab's own)."""
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
        if (path / name).exists():
            raw = read_raw(path / name)
            break
    else:
        raise CheckpointError(
            f"{path} is a directory without model.safetensors or pytorch_model.bin; "
            "point at a weight file or a saved model directory"
        )
    raw.kind = "directory"
    raw.path = path
    cfg_file = path / "config.json"
    if cfg_file.exists():
        try:
            raw.extra["config.json"] = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_file} is not valid JSON ({e})") from None
    return raw
