"""Classify image files in batches with a loaded model; bad files are reported, never fatal.

The library side of `vitlab predict`: preprocessing comes from the model's own data config,
class names from its config, and `explain_dir` adds an attention-rollout overlay per image
(paper section 4.5, Figure 6).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitlab.data.images import ImageError, load_image
from vitlab.errors import ConfigError
from vitlab.files import atomic_path
from vitlab.inspect.attention import (
    InspectError,
    attention_rollout,
    collect_attention,
    no_attention,
)
from vitlab.inspect.plots import plot_overlay
from vitlab.preprocess import label_of, prepare_image
from vitlab.progress import progress_bar
from vitlab.runtime.device import model_device
from vitlab.runtime.kernels import PackedWeights
from vitlab.runtime.precision import in_precision, inference_precision, weights_dtype


@dataclass
class Prediction:
    """The top classes of one image: (class index, label, probability), most likely first."""

    file: str
    top: list[tuple[int, str, float]]
    explanation: str | None = None  # the rollout PNG written for it, with explain_dir


@dataclass
class Failure:
    """A file that could not be classified, and why (one line)."""

    file: str
    reason: str


@dataclass
class PredictResult:
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def _batches(
    model: nn.Module, files: Sequence[Path], batch_size: int, on_failure: Callable | None
) -> Iterator[tuple[list[Path], list[torch.Tensor], list[np.ndarray], list[Failure]]]:
    """Decode and preprocess the files, yielding full batches; failures travel with them."""
    paths, xs, shows, failures = [], [], [], []
    channels = model.cfg.in_chans
    for f in files:
        try:
            x, show = prepare_image(model, load_image(f, channels))
        except ImageError as e:
            failures.append(Failure(str(f), str(e)))
            if on_failure:
                on_failure(failures[-1])
            continue
        paths.append(f)
        xs.append(x)
        shows.append(show)
        if len(paths) == batch_size:
            yield paths, xs, shows, failures
            paths, xs, shows, failures = [], [], [], []
    if paths or failures:
        yield paths, xs, shows, failures


@torch.inference_mode()
def _classify(model: nn.Module, x: torch.Tensor, explain: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Probabilities (B, classes) and, when explaining, rollout maps (B, gh, gw)."""
    x = x.to(weights_dtype(model))  # a bf16 copy (`in_precision`) takes bf16 images
    if not explain:
        return model(x).float().softmax(-1), np.empty(0)
    cfg = model.cfg
    attn, out = collect_attention(model, x)
    maps = attention_rollout(attn, out["grid"], cfg.num_prefix_tokens, cfg.pool)
    return out["logits"].float().softmax(-1), maps


@dataclass
class _Explainer:
    """Writes rollout overlays into `directory`, one name per image of this run."""

    directory: Path
    taken: set[str] = field(default_factory=set)

    def write(self, path: Path, show: np.ndarray, heat: np.ndarray, title: str) -> str:
        name, n = f"{path.stem}.png", 1
        while name in self.taken:  # photos/a.jpg and more/a.png: a.png, a-2.png
            n += 1
            name = f"{path.stem}-{n}.png"
        self.taken.add(name)
        return str(plot_overlay(show, heat, self.directory / name, title))


def predict_files(
    model: nn.Module,
    files: Sequence[str | Path],
    *,
    topk: int = 5,
    batch_size: int = 16,
    explain_dir: str | Path | None = None,
    out: str | Path | None = None,
    on_failure: Callable[[Failure], None] | None = None,
    progress: bool = True,
    precision: str = "fp32",
) -> PredictResult:
    """Classify `files` in batches: the top `topk` classes of each, and every file that could
    not be read (empty, truncated, not an image, too large, a directory, missing) as a Failure
    while the others are still classified. With `out` (.json or .csv) the results are also
    written there. `precision` is fp32, bf16 (a bf16 copy of the model runs; `model` is not
    changed) or auto (bf16 where it is measured faster here,
    `vitlab.runtime.precision.inference_precision`)."""
    if not getattr(model.cfg, "num_classes", 0):
        raise InspectError(
            "this checkpoint has no classifier head (num_classes=0); nothing to predict"
        )
    if batch_size < 1 or topk < 1:
        raise ConfigError(f"batch size and top-k must be at least 1 (got {batch_size}, {topk})")
    if out is not None:
        _results_format(out)
    if explain_dir is not None and not hasattr(model, "forward_intermediates"):
        raise InspectError(f"--explain draws attention rollout: {no_attention(model)}")
    model.eval()
    topk = min(topk, model.cfg.num_classes)
    explain = _Explainer(Path(explain_dir)) if explain_dir is not None else None
    if explain:
        explain.directory.mkdir(parents=True, exist_ok=True)
    result = PredictResult()
    device = model_device(model)
    runner = in_precision(model, inference_precision(precision, device))
    bar = progress_bar(total=len(files), desc="predict", unit="img", disable=not progress)
    with bar, PackedWeights():
        for paths, xs, shows, failures in _batches(
            model, list(map(Path, files)), batch_size, on_failure
        ):
            result.failures += failures
            bar.update(len(paths) + len(failures))
            if not paths:
                continue
            probs, maps = _classify(runner, torch.stack(xs).to(device), explain is not None)
            result.predictions += _predictions(model, paths, probs, topk, explain, shows, maps)
    if out is not None:
        write_results(result, out)
    return result


def _predictions(
    model: nn.Module,
    paths: list[Path],
    probs: torch.Tensor,
    topk: int,
    explain: _Explainer | None,
    shows: list[np.ndarray],
    maps: np.ndarray,
) -> list[Prediction]:
    """One Prediction per image of a batch; with `explain`, its rollout overlay PNG too."""
    p, idx = probs.topk(topk, dim=-1)  # (B, k) each
    out = []
    for i, path in enumerate(paths):
        top = [(int(c), label_of(model, int(c)), float(q)) for q, c in zip(p[i], idx[i])]
        pred = Prediction(str(path), top)
        if explain is not None:
            title = f"{path.name}: {top[0][1]} ({top[0][2]:.1%}); attention rollout"
            pred.explanation = explain.write(path, shows[i], maps[i], title)
        out.append(pred)
    return out


def _results_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ConfigError(f"--out {path}: give a file ending in .json or .csv")
    return suffix


def write_results(result: PredictResult, path: str | Path) -> Path:
    """Write predictions (and failures) as .json or .csv, atomically."""
    path = Path(path)
    suffix = _results_format(path)
    with atomic_path(path) as tmp:
        if suffix == ".json":
            tmp.write_text(json.dumps(_as_json(result), indent=2), encoding="utf-8")
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["file", "rank", "class_index", "label", "probability", "error"])
                for pr in result.predictions:
                    for rank, (c, label, q) in enumerate(pr.top, start=1):
                        w.writerow([pr.file, rank, c, label, f"{q:.6f}", ""])
                for fl in result.failures:
                    w.writerow([fl.file, "", "", "", "", fl.reason])
    return path


def _as_json(result: PredictResult) -> dict:
    return {
        "predictions": [
            {
                "file": p.file,
                "top": [{"index": c, "label": lab, "probability": q} for c, lab, q in p.top],
                **({"explanation": p.explanation} if p.explanation else {}),
            }
            for p in result.predictions
        ],
        "failures": [{"file": f.file, "error": f.reason} for f in result.failures],
    }
