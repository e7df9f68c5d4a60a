"""OpenVINO: every vitlab model as an OpenVINO IR (`m.xml` with its weights in `m.bin`), fp32 or
int8, and `OpenVinoModel`, which runs such a file wherever vitlab takes a model.

The IR is made from vitlab's own ONNX export (`vitlab.weights.onnx.export_onnx`, already checked
against PyTorch in ONNX Runtime) by `openvino.convert_model`, and carries the same metadata as
the ONNX file (config, class names, preprocessing recipe, quantisation) in its runtime info
under "vitlab", so `vitlab predict`, `eval`, `serve` and `bench` run it alone, and a deployment
without vitlab reads the preprocessing with `model.get_rt_info(["vitlab", "preprocessing"])`.
int8 is NNCF's post-training quantisation with its transformer model type (LayerNorm, softmax
and GELU kept in float, SmoothQuant on the linear layers) and activation ranges calibrated on
images of the training data, as the static ONNX path does.

OpenVINO's CPU plugin chooses the precision of the float part at compile time
(`INFERENCE_PRECISION_HINT`): vitlab compiles in fp32 unless bf16 is asked for (`--precision
bf16`, `OpenVinoModel.with_precision`), where OpenVINO on an AMX or AVX512-BF16 CPU would take
bf16 by itself. Every IR is compiled once and compared with PyTorch before it is kept: an fp32
IR to fp32 rounding (as ONNX exports are), an int8 one by its top-1 agreement on the
calibration images.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab.errors import CheckpointError, ConfigError, require
from vitlab.weights.onnx import (
    ExportReport,
    GraphModel,
    _quiet_loggers,
    _refuse_beyond_fp32,
    export_onnx,
    read_metadata,
)

log = logging.getLogger("vitlab")

SUFFIX = ".xml"
FORMAT = "vitlab-openvino"  # the "format" entry of the runtime info vitlab writes
RT = "vitlab"  # the runtime-info section holding vitlab's metadata
HINTS = {"fp32": "f32", "bf16": "bf16"}  # vitlab's precision -> INFERENCE_PRECISION_HINT


def require_openvino(quantize: bool = False) -> Any:
    """The openvino module (and nncf for int8), or the install line."""
    ov = require("openvino", "openvino", "OpenVINO export and inference")
    if quantize:
        require("nncf", "openvino", "OpenVINO int8 quantisation")
    return ov


@dataclass
class OpenVinoReport:
    """What `export_openvino` wrote and how closely OpenVINO reproduced PyTorch."""

    path: Path  # the .xml (its weights beside it in the .bin of the same name)
    export: ExportReport  # the ONNX export it was made from (checked in ONNX Runtime)
    quantization: str  # "none" or NNCF's description
    max_abs_diff: float | None = None  # fp32: OpenVINO's logits against PyTorch's
    agreement: float | None = None  # int8: top-1 agreement with PyTorch on the calibration images
    calibration_images: int = 0
    megabytes: float = 0.0


def bin_path(xml: str | Path) -> Path:
    return Path(xml).with_suffix(".bin")


def export_openvino(
    model: nn.Module,
    path: str | Path,
    *,
    quantize: str | None = None,
    calibration: Iterable[np.ndarray] | None = None,
    calibration_note: str = "",
    dynamic_img_size: bool = False,
    check: bool = True,
) -> OpenVinoReport:
    """Write `model` (any vitlab ViT, hybrid or ResNetV2) to `path` (.xml, with the .bin beside
    it) as an OpenVINO IR, batch axis dynamic; with `quantize="int8"`, quantised by NNCF on
    `calibration` (batches of preprocessed images (B, C, H, W) float32, from the training
    data). The IR is checked against PyTorch before it replaces `path` (see the module
    docstring); both files are replaced together."""
    ov = require_openvino(quantize is not None)
    path = Path(path)
    if path.suffix.lower() != SUFFIX:
        raise ConfigError(f"{path}: an OpenVINO IR is named .xml; name it {path.stem}{SUFFIX}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize takes int8, got {quantize!r}")
    batches = [np.asarray(b, dtype=np.float32) for b in calibration] if calibration else []
    if quantize and not batches:
        raise ConfigError(
            "OpenVINO int8 calibrates its activation ranges on images: add --calibrate DATA "
            "(training images of the model's data, e.g. fashion-mnist)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        exported = export_onnx(model, onnx_file, dynamic_img_size=dynamic_img_size)
        meta = read_metadata(onnx_file)
        ir = ov.convert_model(str(onnx_file))
        quantization = "none"
        if quantize:
            ir, quantization = _quantize(ir, batches, calibration_note)
        meta.update(format=FORMAT, quantization=quantization)
        for key, value in meta.items():
            ir.set_rt_info(value, [RT, key])
        staged = Path(tmp) / path.name
        ov.save_model(ir, str(staged), compress_to_fp16=False)
        report = OpenVinoReport(path, exported, quantization)
        report.calibration_images = sum(len(b) for b in batches)
        if check:
            runner = OpenVinoModel(staged)
            if quantize:
                report.agreement = _agreement(model, runner, batches)
            else:
                report.max_abs_diff = _check_fp32(model, runner)
        report.megabytes = (staged.stat().st_size + bin_path(staged).stat().st_size) / 1e6
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(bin_path(staged), bin_path(path))  # the weights first: the .xml names them
        os.replace(staged, path)
    return report


def _quantize(ir: Any, batches: list[np.ndarray], note: str) -> tuple[Any, str]:
    """NNCF post-training int8 of the IR, transformer mode, ranges from all of `batches`."""
    with _quiet_loggers("torch.utils.cpp_extension", "nncf"):  # "no CUDA runtime", notes
        import nncf

    n = sum(len(b) for b in batches)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: not into --json output
        quantized = nncf.quantize(
            ir,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(batches),  # NNCF counts the items it is given: here, batches
        )
    where = f" of {note}" if note else ""
    return quantized, f"int8 NNCF post-training (transformer), calibrated on {n} images{where}"


def _check_fp32(model: nn.Module, runner: OpenVinoModel) -> float:
    """OpenVINO fp32 against PyTorch fp32 and fp64 on a random batch of 3 (as ONNX exports
    are checked): the largest |logit difference|, refused beyond fp32 rounding."""
    model = copy.deepcopy(model).float().cpu().eval()
    cfg = model.cfg
    x = torch.randn(3, cfg.in_chans, cfg.img_size, cfg.img_size,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.inference_mode():
        want = model(x).numpy()
        ref = copy.deepcopy(model).double()(x.double()).numpy()
    got = runner(x).numpy()
    _refuse_beyond_fp32(*(float(np.abs(a).max()) for a in (got - ref, want - ref, ref)))
    return float(np.abs(got - want).max())


def _agreement(model: nn.Module, runner: OpenVinoModel, batches: list[np.ndarray]) -> float:
    """The fraction of the calibration images whose top-1 class the IR and PyTorch fp32 agree
    on."""
    model = copy.deepcopy(model).float().cpu().eval()
    same = n = 0
    for b in batches:
        x = torch.from_numpy(b)
        with torch.inference_mode():
            same += int((model(x).argmax(1) == runner(x).argmax(1)).sum())
        n += len(x)
    return same / max(n, 1)


# ------------------------------------------------------------------------------------ running
class OpenVinoModel(GraphModel):
    """A vitlab OpenVINO IR run by OpenVINO's CPU plugin (`GraphModel`), with `threads` threads
    (default: torch's count) and its float part in `precision` ("fp32" or "bf16": OpenVINO's
    inference precision hint)."""

    label = "an OpenVINO IR"
    runner = "OpenVINO's CPU plugin"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32"):
        super().__init__()
        ov = require_openvino()
        path = Path(path)
        if not bin_path(path).is_file():
            raise CheckpointError(
                f"{path}: an OpenVINO IR keeps its weights in {bin_path(path).name} beside it, "
                "which is missing; copy both files"
            )
        try:
            self.ir = ov.Core().read_model(str(path))
        except Exception as e:  # OpenVINO raises RuntimeError with the parser's reason
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} is not a readable OpenVINO IR ({first})") from None
        meta = self._ir_metadata()
        if meta.get("format") != FORMAT or "config" not in meta:
            raise CheckpointError(
                f"{path} is an OpenVINO IR vitlab did not write (no vitlab config in its "
                "runtime info); export it with `vitlab convert CHECKPOINT OUT.xml --to openvino`"
            )
        self._read_metadata(path, meta, "openvino")
        self.threads = threads or torch.get_num_threads()
        self.precision = precision
        self.compiled = self._compile(precision)

    def _ir_metadata(self) -> dict[str, str]:
        if not self.ir.has_rt_info([RT]):
            return {}
        section = self.ir.get_rt_info()[RT]
        return {str(k): str(v.astype(str)) for k, v in section.items()}

    def _compile(self, precision: str) -> Any:
        import openvino as ov

        if precision not in HINTS:
            raise ConfigError(f"an OpenVINO IR runs in fp32 or bf16, not {precision!r}")
        config = {"INFERENCE_PRECISION_HINT": HINTS[precision],
                  "INFERENCE_NUM_THREADS": self.threads}  # fmt: skip
        return ov.Core().compile_model(self.ir, "CPU", config)

    def with_precision(self, precision: str) -> OpenVinoModel:
        """The same IR compiled with its float part in `precision` (this one is not changed);
        `vitlab.runtime.precision.in_precision` calls it for `--precision bf16`."""
        if precision == self.precision:
            return self
        other = copy.copy(self)
        other.precision, other.compiled = precision, self._compile(precision)
        return other

    def _run(self, feed: np.ndarray) -> torch.Tensor:
        out = self.compiled(feed)[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.precision}"


def load_openvino(path: str | Path, threads: int | None = None, **overrides: Any) -> OpenVinoModel:
    """`OpenVinoModel(path)`; config overrides cannot apply to a graph, so they are refused."""
    if overrides:
        raise ConfigError(
            f"{path} is an OpenVINO IR, whose graph is fixed: {', '.join(sorted(overrides))} "
            "cannot be changed; change them on the PyTorch checkpoint and export again"
        )
    return OpenVinoModel(path, threads)
