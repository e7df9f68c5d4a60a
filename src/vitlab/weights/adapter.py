"""What every weight adapter is made of: a `Source` (detector, architecture reader, key map,
exporter) and a declarative key map of `Rule`s with small named transforms (torchtitan's
state-dict adapters, nanoGPT's `transposed` list), plus the shape-reading helpers that files
without a config need.

A key map fails loudly: tensors a rule needs but the file lacks, and tensors of the file that no
rule takes, are named together in one CheckpointError; nothing is guessed silently.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.errors import CheckpointError
from vitlab.models.config import AnyConfig, ViTConfig, config_from_dict, config_to_json
from vitlab.models.registry import matching_variants
from vitlab.weights.io import RawCheckpoint

log = logging.getLogger("vitlab")

# A file vitlab wrote says so in its metadata; other layouts' detectors leave such files alone.
FORMAT_KEY = "format"
FORMAT_VALUE = "vitlab"


@dataclass(frozen=True)
class Source:
    """One ecosystem's weight layout, in both directions. `resample` names the method of
    `vitlab.weights.posemb.METHODS` that its own library uses for position embeddings at a new
    resolution; `suffixes` (or, for a folder, `folder`) what an export writes."""

    name: str
    description: str
    detect: Callable[[RawCheckpoint], bool]
    infer_config: Callable[[RawCheckpoint], AnyConfig]
    to_vitlab: Callable[[RawCheckpoint, AnyConfig], dict[str, torch.Tensor]]
    export: Callable[[nn.Module, Path], Path] | None = None
    resample: str = "bicubic"
    suffixes: tuple[str, ...] = (".safetensors",)  # the file names an export may take
    folder: tuple[str, ...] = ()  # the files of a folder export (then `suffixes` is unused)


def written_by_vitlab(raw: RawCheckpoint) -> bool:
    """Whether the file is a native vitlab checkpoint (config in the metadata)."""
    return raw.metadata.get(FORMAT_KEY) == FORMAT_VALUE


# ------------------------------------------------------------------------- declarative key maps
def _same(*ts: torch.Tensor) -> torch.Tensor:
    return ts[0]


def _as_list(t: torch.Tensor) -> list[torch.Tensor]:
    return [t]


@dataclass(frozen=True)
class Rule:
    """One vitlab tensor and the tensor(s) it is in another layout, with the named transforms
    between them (`to_ours(*theirs)` and `to_theirs(ours) -> list`, e.g. fuse/split qkv)."""

    ours: str
    theirs: tuple[str, ...]
    to_ours: Callable[..., torch.Tensor] = _same
    to_theirs: Callable[[torch.Tensor], list[torch.Tensor]] = _as_list
    optional: bool = False  # e.g. a head: absent in headless files


def rule(
    ours: str,
    theirs: str | tuple[str, ...],
    to_ours: Callable[..., torch.Tensor] = _same,
    to_theirs: Callable[[torch.Tensor], list[torch.Tensor]] = _as_list,
    optional: bool = False,
) -> Rule:
    names = (theirs,) if isinstance(theirs, str) else tuple(theirs)
    return Rule(ours, names, to_ours, to_theirs, optional)


def apply_rules(rules: list[Rule], theirs: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    """Their tensors -> vitlab's; keys a rule needs but the file lacks, and keys of the file no
    rule takes, are reported together as one CheckpointError."""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for r in rules:
        absent = [k for k in r.theirs if k not in theirs]
        if absent:
            if not (r.optional and len(absent) == len(r.theirs)):
                missing += absent
            continue
        out[r.ours] = r.to_ours(*[_tensor(theirs[k]) for k in r.theirs])
        used.update(r.theirs)
    unused = sorted(set(theirs) - used)
    if missing or unused:
        raise CheckpointError(
            f"{what}: the tensors do not fit the architecture read from them ("
            + listing(("missing", missing), ("not understood", unused))
            + "). Pass source=... or model=... if the layout was misdetected."
        )
    return out


def invert_rules(rules: list[Rule], ours: dict[str, torch.Tensor], what: str) -> dict[str, Any]:
    """vitlab's tensors -> another layout's; a vitlab tensor no rule exports is an error."""
    out: dict[str, Any] = {}
    for r in rules:
        if r.ours in ours:
            out.update(zip(r.theirs, r.to_theirs(ours[r.ours].detach().cpu())))
    left = sorted(set(ours) - {r.ours for r in rules})
    if left:
        raise CheckpointError(f"{what} has no place for: {short(left)}")
    return out


def drop_parts(raw: RawCheckpoint, parts: dict[str, str]) -> dict[str, Any]:
    """`raw`'s tensors less the parts that only pre-training uses (key prefix -> what the part
    is: an MAE decoder, a masked-patch-prediction head), with one log line per part found."""
    sd = dict(raw.tensors)
    for what in dict.fromkeys(parts.values()):
        prefixes = tuple(p for p, w in parts.items() if w == what)
        dropped = [k for k in sd if k.startswith(prefixes)]
        for k in dropped:
            del sd[k]
        if dropped:
            log.info("dropped %s (%d tensors) of %s: fine-tuning and export use the encoder "
                     "only", what, len(dropped), raw.path.name)  # fmt: skip
    return sd


def _tensor(v: Any) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))


def short(items: list[str], n: int = 8) -> str:
    """The first `n` items, comma-separated, and how many more there are."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def listing(*groups: tuple[str, list[str]]) -> str:
    """ "label: a, b; label2: c" for the groups that are not empty."""
    return "; ".join(f"{label}: {short(items)}" for label, items in groups if items)


# ------------------------------------------------------------------- reading shapes from keys
def count_indexed(keys: Iterable[str], pattern: str) -> int:
    """1 + the largest integer the regex `pattern`'s group 1 matches at the start of a key
    (0 when none does): the number of blocks, stages or units a file holds."""
    idx = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def grid_from_tokens(n_pos: int, n_prefix: int) -> tuple[int, bool]:
    """Side of the square patch grid held by `n_pos` embeddings, and whether the class token has
    one of its own."""
    for with_cls in (True, False) if n_prefix else (False,):
        n = n_pos - (n_prefix if with_cls else 0)
        side = math.isqrt(n) if n > 0 else 0
        if side * side == n and side > 0:
            return side, with_cls
    raise CheckpointError(f"{n_pos} position embeddings do not form a square patch grid")


# Where a reader put a value the file does not store: `cfg.extra[GUESSED]` maps the field to
# the registry variant it came from, to "head width 64", or to UNKNOWN (load_checkpoint says
# which, or refuses an unknown one that the caller did not give).
GUESSED = "guessed"
UNKNOWN = "unknown"


def guess_num_heads(dim: int, depth: int, mlp: int) -> tuple[int, str]:
    """Head counts are not in timm's or torchvision's tensors: the registry's for the same
    (D, depth, MLP) and the variant's name; else 64-wide heads, as every variant of the paper
    has (H/14 aside), when 64 divides D; else UNKNOWN (with a placeholder of 1)."""
    for v in matching_variants(embed_dim=dim, depth=depth, mlp_dim=mlp):
        if isinstance(v.config, ViTConfig):
            return v.config.num_heads, f"the registry's {v.name}"
    if dim % 64 == 0:
        return dim // 64, "heads 64 wide, as the paper's"
    return 1, UNKNOWN


# --------------------------------------------------------- a config beside another layout
CONFIG_META = "vitlab_config"  # vitlab's config, in the metadata of other layouts' exports


def config_metadata(cfg: AnyConfig) -> dict[str, str]:
    """Safetensors metadata that carries what another layout cannot hold (head count, class
    names, normalisation); that layout's own readers ignore it."""
    return {CONFIG_META: config_to_json(cfg)}


def stored_config(raw: RawCheckpoint) -> AnyConfig | None:
    """The config a vitlab export left in the metadata, or None."""
    text = raw.metadata.get(CONFIG_META)
    if text is None:
        return None
    try:
        return config_from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{raw.path}: the stored vitlab config is damaged ({e})") from None


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (shipped offline with torchvision)."""
    from torchvision.models import ViT_B_16_Weights

    return tuple(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"])
