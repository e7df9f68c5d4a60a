"""Deployment: a model as an ONNX file or an OpenVINO IR, fp32 or int8, in one call
(`vitlab convert --to onnx|openvino`).

`export_for_deployment` exports the model (checked against PyTorch in ONNX Runtime), and with
`quantize="int8"` quantises it: dynamically, or statically with activation ranges calibrated on
`calibrate` images of a dataset (the training split, in the model's own evaluation
preprocessing). The int8 file is then checked too: its top-1 agreement with the fp32 export on
the calibration images. `vitlab.weights.onnx` and `vitlab.weights.quantize` hold the mechanics.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from vitlab.bench import AllResult, BenchSpec, PathResult, bench_all
from vitlab.data.datasets import load_data
from vitlab.data.loader import build_loader
from vitlab.data.subsets import balanced_subset
from vitlab.data.transforms import normalize
from vitlab.errors import ConfigError
from vitlab.evaluate import eval_augmentation
from vitlab.weights.formats import OPENVINO, runtime_graph
from vitlab.weights.onnx import ExportReport, OnnxModel, export_onnx
from vitlab.weights.quantize import QuantizeReport, quantize_onnx

if TYPE_CHECKING:
    from vitlab.weights.openvino import OpenVinoReport

log = logging.getLogger("vitlab")

CALIBRATION_IMAGES = 256
SUFFIXES = (".safetensors", ".onnx", ".xml")  # the files `deploy_fastest` may write


@dataclass
class DeployReport:
    export: ExportReport
    quantize: QuantizeReport | None = None
    agreement: float | None = None  # int8 vs fp32 top-1 agreement on the calibration images
    openvino: OpenVinoReport | None = None  # an OpenVINO IR was written (from `export`)


def calibration_batches(
    model: nn.Module,
    data_spec: str,
    images: int = CALIBRATION_IMAGES,
    *,
    root: str | None = None,
    download: bool = False,
    seed: int = 0,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """`images` class-balanced training images of `data_spec`, preprocessed as the model's
    evaluation does (resize, crop, channels, mean/std): batches (B, C, H, W) float32."""
    if images < 1:
        raise ConfigError(f"calibration needs at least one image, got {images}")
    data = load_data(data_spec, root, download=download)
    if data.train is None:
        raise ConfigError(f"{data.name} has no training split to calibrate on")
    subset = balanced_subset(data.train, seed, total=min(images, len(data.train)))
    loader, _ = build_loader(subset, eval_augmentation(model), batch_size)
    cfg = model.cfg
    return [normalize(x, tuple(cfg.mean), tuple(cfg.std)).numpy() for x, _, _ in loader]


def export_for_deployment(
    model: nn.Module,
    dst: str | Path,
    *,
    quantize: Literal["int8"] | None = None,
    calibrate: str | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    data_root: str | None = None,
    download: bool = False,
    dynamic_img_size: bool = False,
    opset: int | None = None,
) -> DeployReport:
    """Export `model` to the ONNX file `dst`; with `quantize="int8"` write int8 there instead
    (static when `calibrate` names a dataset, dynamic otherwise). A `dst` named .xml is an
    OpenVINO IR instead (`export_openvino`; its int8 is always calibrated)."""
    if calibrate and not quantize:
        raise ConfigError("--calibrate is for int8: add --quantize int8")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize takes int8, got {quantize!r}")
    if runtime_graph(dst) is OPENVINO:
        if opset is not None:
            raise ConfigError("--opset is for --to onnx; an OpenVINO IR has no opset to choose")
        return _to_openvino(model, dst, quantize, calibrate, calibration_images, data_root,
                            download, dynamic_img_size)  # fmt: skip
    if not quantize:
        return DeployReport(export_onnx(model, dst, dynamic_img_size=dynamic_img_size, opset=opset))
    batches = None
    if calibrate:  # read the data first: a wrong name fails before the (slower) export
        batches = calibration_batches(
            model, calibrate, calibration_images, root=data_root, download=download
        )
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        exported = export_onnx(model, fp32, dynamic_img_size=dynamic_img_size, opset=opset)
        method = "static" if batches is not None else "dynamic"
        q = quantize_onnx(
            fp32, dst, method=method, calibration=batches, calibration_note=calibrate or ""
        )
        agreement = _agreement(fp32, Path(dst), batches) if batches else None
    exported.path = Path(dst)
    return DeployReport(exported, q, agreement)


def _to_openvino(
    model: nn.Module,
    dst: str | Path,
    quantize: str | None,
    calibrate: str | None,
    images: int,
    root: str | None,
    download: bool,
    dynamic_img_size: bool,
) -> DeployReport:
    """`export_openvino`, calibrated on `calibrate`'s training images for int8."""
    from vitlab.weights.openvino import export_openvino, require_openvino

    require_openvino(quantize is not None)
    if quantize and not calibrate:
        raise ConfigError(
            "OpenVINO int8 calibrates its activation ranges on images: add --calibrate DATA "
            "(training images of the model's data, e.g. fashion-mnist)"
        )
    batches = None
    if calibrate:
        batches = calibration_batches(model, calibrate, images, root=root, download=download)
    note = calibrate or ""
    r = export_openvino(model, dst, quantize=quantize, calibration=batches,
                        calibration_note=note, dynamic_img_size=dynamic_img_size)  # fmt: skip
    return DeployReport(r.export, None, r.agreement, openvino=r)


def _agreement(fp32: Path, int8: Path, batches: list[np.ndarray]) -> float:
    """The fraction of the calibration images whose top-1 class int8 and fp32 agree on."""
    a, b = OnnxModel(fp32), OnnxModel(int8)
    same = n = 0
    for x in _tensors(batches):
        same += int((a(x).argmax(1) == b(x).argmax(1)).sum())
        n += len(x)
    return same / max(n, 1)


def _tensors(batches: list[np.ndarray]) -> Iterator[torch.Tensor]:
    for x in batches:
        yield torch.from_numpy(x)


# ------------------------------------------------------------------- the fastest path, chosen
@dataclass
class DeployChoice:
    """What `deploy_fastest` measured, chose and wrote."""

    measured: AllResult
    chosen: PathResult
    path: Path  # the file written
    run_with: str  # how to run it: the precision flag to pass, if any
    agreement: float | None = None  # int8: top-1 agreement on the calibration images


def deploy_fastest(
    model: nn.Module,
    dst: str | Path,
    *,
    calibrate: str | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    data_root: str | None = None,
    download: bool = False,
    batch: int = 16,
    iters: int = 10,
    progress: Callable | None = None,
) -> DeployChoice:
    """Time every deployment path on `model` here (`vitlab.bench.bench_all`, batch `batch`)
    and write the fastest one's file at `dst` with its suffix (.safetensors for a PyTorch path,
    .onnx, or .xml): `vitlab convert --to deploy`. int8 paths are written calibrated on
    `calibrate`'s training images when it is given (ONNX static, OpenVINO NNCF); without it
    ONNX int8 is dynamic, as it was timed, and OpenVINO int8, which needs real images to be
    written, is not a candidate."""
    dst = Path(dst)
    dst = dst.with_suffix("") if dst.suffix.lower() in SUFFIXES else dst
    static = calibrate is not None
    name = str(model.cfg.extra.get("loaded_from") or type(model).__name__)
    spec = BenchSpec(model=name, batch=batch, iters=iters, warmup=2, device="cpu",
                     int8="static" if static else "dynamic")  # fmt: skip

    def skip(name: str) -> str | None:
        if name == "openvino int8" and not static:
            return "written calibrated on real images: add --calibrate DATA to consider it"
        return None

    measured = bench_all(spec, progress, model=model, skip=skip)
    best = measured.fastest
    kw = {"calibrate": calibrate, "calibration_images": calibration_images,
          "data_root": data_root, "download": download}  # fmt: skip
    run_with, agreement = "", None
    if best.backend == "torch":
        from vitlab.weights.checkpoint import save_checkpoint

        path = Path(save_checkpoint(model, dst.with_suffix(".safetensors")))
        run_with = f"--precision {best.precision}" if best.precision != "fp32" else ""
    else:
        path = dst.with_suffix(".onnx" if best.backend == "onnx" else ".xml")
        int8 = best.precision == "int8"
        r = export_for_deployment(model, path, quantize="int8" if int8 else None,
                                  **(kw if int8 else {}))  # fmt: skip
        agreement = r.agreement
        run_with = "--precision bf16" if best.precision == "bf16" else ""
    return DeployChoice(measured, best, path, run_with, agreement)
