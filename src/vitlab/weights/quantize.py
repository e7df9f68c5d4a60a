"""int8 ONNX models: post-training quantisation of a vitlab `.onnx` file with ONNX Runtime's
quantisation tools, `dynamic` (weights int8 per output channel ahead of time, activations
quantised per batch at run time) or `static` (activation ranges calibrated on a few hundred
real images, QDQ format, u8 activations and s8 weights: the pairing of the VNNI instruction).

Dynamic int8 quantises the linear layers (qkv, attention projection, MLP, head); static also
the convolutions (a ResNet's, a hybrid's stem, the patch embedding). LayerNorm, softmax, GELU,
the attention products (two activations, nothing to quantise ahead of time) and the residual
additions stay float32. On the project's 2-core CPU the float part was about 30% of an int8
ViT-S/16's time, the int8 matmuls 50%; the demo model lost 0.09 points of test top-1 and the
fashion_mnist_bit ResNet 0.05 (benchmarks/deploy.py; README, "Deploy").
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vitlab.errors import ConfigError
from vitlab.files import atomic_path
from vitlab.weights.onnx import INPUT, SUFFIX, read_metadata, require_onnx, set_metadata

log = logging.getLogger("vitlab")

Method = Literal["dynamic", "static"]
METHODS: tuple[Method, ...] = ("dynamic", "static")

DYNAMIC_OPS = ("MatMul", "Gemm")
STATIC_OPS = ("MatMul", "Gemm", "Conv")


@dataclass
class QuantizeReport:
    """What `quantize_onnx` wrote."""

    path: Path
    method: Method
    description: str  # as stored in the file's "quantization" metadata
    int8_ops: dict[str, int] = field(default_factory=dict)  # op type -> count in the graph
    float_ops: dict[str, int] = field(default_factory=dict)
    calibration_images: int = 0
    megabytes: float = 0.0


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    method: Method = "dynamic",
    calibration: Iterable[np.ndarray] | None = None,
    per_channel: bool = True,
    calibration_note: str = "",
) -> QuantizeReport:
    """Write an int8 copy of the vitlab ONNX file `src` to `dst`, with its metadata (config,
    class names, preprocessing) and the method used. `static` needs `calibration`: batches of
    preprocessed images (B, C, H, W) float32, as the model takes them; a few hundred images
    of the training data are enough (never calibrate on the test set)."""
    require_onnx()
    src, dst = Path(src), Path(dst)
    if method not in METHODS:
        raise ConfigError(
            f"quantisation method must be one of {', '.join(METHODS)}, got {method!r}"
        )
    if dst.suffix.lower() != SUFFIX:
        raise ConfigError(f"{dst}: an ONNX file is named .onnx; name it {dst.stem}{SUFFIX}")
    meta = read_metadata(src)
    if meta.get("quantization", "none") != "none":
        raise ConfigError(f"{src} is already quantised ({meta['quantization']}); start from fp32")
    if method == "static" and calibration is None:
        raise ConfigError("static int8 needs calibration images (--calibrate DATA)")
    if method == "dynamic" and not _has_linear_weights(src):
        raise ConfigError(
            "the model has no linear layers for dynamic int8 to quantise (a ResNet is all "
            "convolutions, and ONNX Runtime's dynamic int8 convolutions ran at under half the "
            "fp32 speed here): quantise it statically, with --calibrate DATA"
        )
    with tempfile.TemporaryDirectory() as tmpdir, atomic_path(dst) as tmp:
        prepared = Path(tmpdir) / "prepared.onnx"
        _prepare(src, prepared)
        reader = _Reader(calibration) if method == "static" else None
        _quantize(prepared, tmp, method, reader, per_channel)
        n = reader.images if reader else 0
        what = _description(method, per_channel, n, calibration_note)
        _restore_metadata(tmp, meta, what)
        report = QuantizeReport(dst, method, what, calibration_images=n)
        report.int8_ops, report.float_ops = op_counts(tmp)
        report.megabytes = tmp.stat().st_size / 1e6
    return report


def _has_linear_weights(path: Path) -> bool:
    """Whether some MatMul or Gemm of the graph multiplies by a stored weight."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer}
    return any(
        n.op_type in DYNAMIC_OPS and any(i in weights for i in n.input[1:2]) for n in graph.node
    )


def _prepare(src: Path, out: Path) -> None:
    """ONNX Runtime's recommended pre-processing: shape inference and graph clean-up, so the
    quantiser sees every MatMul with known shapes."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)


def _quantize(src: Path, out: Path, method: Method, reader: Any, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    with _quiet():
        if method == "dynamic":
            quantize_dynamic(
                str(src),
                str(out),
                op_types_to_quantize=list(DYNAMIC_OPS),
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
            )
            return
        quantize_static(
            str(src),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OPS),
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,  # u8 x s8: the VNNI instruction's pairing
            weight_type=QuantType.QInt8,
            # (not CalibMaxIntermediateOutputs: onnxruntime 1.32 drops the batches it flushes,
            # and MinMax keeps only each batch's minima and maxima anyway)
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    if reader.images == 0:
        raise ConfigError("the calibration data held no images")


class _Reader:
    """ONNX Runtime's CalibrationDataReader over batches of preprocessed images."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)
        self.images = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self.images += len(batch)
        return {INPUT: batch}

    def rewind(self) -> None:  # part of ONNX Runtime's reader interface; one pass is used
        pass


def _description(method: Method, per_channel: bool, images: int, note: str) -> str:
    ops = DYNAMIC_OPS if method == "dynamic" else STATIC_OPS
    weights = "per-channel" if per_channel else "per-tensor"
    text = f"int8 {method} ({', '.join(ops)}; {weights} weights"
    if method == "static":
        text += f"; activations calibrated on {images} images{f' of {note}' if note else ''}"
    return text + ")"


def _restore_metadata(path: Path, meta: dict[str, str], description: str) -> None:
    import onnx

    proto = onnx.load(str(path))
    set_metadata(proto, {**meta, "quantization": description})
    onnx.save(proto, str(path))


def op_counts(path: str | Path) -> tuple[dict[str, int], dict[str, int]]:
    """The graph's int8 operators and its float compute operators, by type."""
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    int8 = {k: v for k, v in ops.items() if k in _INT8_OPS}
    floats = {k: v for k, v in ops.items() if k in _FLOAT_COMPUTE}
    return dict(sorted(int8.items())), dict(sorted(floats.items()))


_INT8_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul", "QAttention",
    "MatMulIntegerToFloat", "QGemm",
}  # fmt: skip
_FLOAT_COMPUTE = {"MatMul", "Gemm", "Conv", "LayerNormalization", "Softmax", "Gelu", "Attention"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantiser logs each node at INFO on the root logger, and its graph
    clean-up prints each initialiser it merges."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
