"""ONNX: every vitlab model as one self-describing `.onnx` file, checked by ONNX Runtime, and
`OnnxModel`, which runs such a file wherever vitlab takes a model.

The file holds the graph and, in its metadata, what everything else needs: the model config
(class names, resolution, mean and std), the resize interpolation and how it was quantised, so
`vitlab predict`, `eval`, `serve` and `bench` work from the file alone; and, for a deployment
without vitlab, the complete preprocessing recipe (`vitlab.preprocess.Preprocess.recipe`, the
"preprocessing" key) and the class names (the "class_names" key), which the README's example
reads with ONNX Runtime, PIL and numpy alone. The export uses the
exporter torch recommends (`torch.onnx.export(..., dynamo=True)`, through `torch.export`) with
a dynamic batch axis; `dynamic_img_size=True` makes height and width dynamic too, with the
position-embedding resampling (bicubic, antialiased, as `VisionTransformer` does it) in the
graph as an ONNX `Resize`. Every export is run once by ONNX Runtime on a batch of another size
and compared with PyTorch before the file is kept.

Quantisation to int8 is `vitlab.weights.quantize`; it reads and writes these files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlab._version import __version__
from vitlab.errors import CheckpointError, ConfigError, require
from vitlab.files import atomic_path
from vitlab.models.base import VitlabModule
from vitlab.models.config import (
    AnyConfig,
    ResNetConfig,
    ViTConfig,
    config_from_dict,
    config_to_json,
    replace,
)
from vitlab.preprocess import label_of, preprocess_of
from vitlab.runtime.device import unwrap_model

log = logging.getLogger("vitlab")

SUFFIX = ".onnx"
FORMAT = "vitlab-onnx"  # metadata "format" of the files vitlab writes
INPUT, OUTPUT = "images", "logits"
MIN_OPSET = 17  # LayerNormalization
MAX_BYTES = 2**31 - 2**26  # protobuf's 2 GiB, less room for the graph and the metadata
# The export check: ONNX Runtime's distance to an fp64 PyTorch run may be FP32_MARGIN times
# PyTorch fp32's own, plus FP32_FLOOR of the logits' scale (a few fp32 roundings there).
FP32_MARGIN, FP32_FLOOR = 4.0, 1e-6


def require_onnx() -> None:
    """Refuse, with the install line, when onnx or onnxruntime is missing."""
    for name in ("onnx", "onnxruntime"):
        require(name, "onnx", "ONNX export and inference")


# ------------------------------------------------------------------------------------ export
@dataclass
class ExportReport:
    """What `export_onnx` wrote and how closely ONNX Runtime reproduced PyTorch."""

    path: Path
    opset: int
    dynamic_img_size: bool
    max_abs_diff: float  # over a check batch of another size than the traced one
    checked_sizes: tuple[int, ...]  # the square input sizes checked (one unless dynamic)
    megabytes: float


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    dynamic_img_size: bool = False,
    opset: int | None = None,
    check: bool = True,
) -> ExportReport:
    """Write `model` (any vitlab ViT, hybrid or ResNetV2) to `path` as ONNX, fp32, batch axis
    dynamic; with `dynamic_img_size`, height and width too (ViTs then resample their position
    embeddings in the graph). `opset` asks for an older operator set than the exporter's own
    (for older runtimes); a model that set cannot express is refused with the reason. The
    export is compared with PyTorch in ONNX Runtime (batch 3, traced with 2) before it
    replaces `path`; one further from the model than fp32 rounding explains is refused."""
    require_onnx()
    path = Path(path)
    if path.suffix.lower() != SUFFIX:
        raise ConfigError(f"{path}: an ONNX file is named .onnx; name it {path.stem}{SUFFIX}")
    if opset is not None and opset < MIN_OPSET:
        raise ConfigError(f"ONNX opsets below {MIN_OPSET} lack LayerNormalization; ask for "
                          f"{MIN_OPSET} or later")  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    if 4 * params > MAX_BYTES:
        raise ConfigError(
            f"{params / 1e6:.0f}M parameters are {4 * params / 2**30:.1f} GiB in fp32, over the "
            "2 GiB that one ONNX file can hold (protobuf's limit); vitlab writes self-contained "
            "files, so export a smaller variant (ViT-L/16 fits)"
        )
    model = _export_copy(model, dynamic_img_size)
    cfg = model.cfg
    example = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    with atomic_path(path) as tmp:
        _trace(model, example, tmp, dynamic_img_size, opset)
        written = _settle_opset(tmp, opset, dynamic_img_size)
        _write_metadata(tmp, model, dynamic_img_size)
        report = ExportReport(path, written, dynamic_img_size, 0.0, (cfg.img_size,), 0.0)
        if check:
            report.max_abs_diff, report.checked_sizes = check_export(model, tmp, dynamic_img_size)
        report.megabytes = tmp.stat().st_size / 1e6
    return report


def _export_copy(model: nn.Module, dynamic_img_size: bool) -> nn.Module:
    """An fp32 CPU copy in eval mode of the bare model (DDP and torch.compile unwrapped)."""
    model = unwrap_model(model)
    if not isinstance(getattr(model, "cfg", None), (ViTConfig, ResNetConfig)):
        raise ConfigError(
            f"export_onnx takes a vitlab model (ViT, hybrid or ResNetV2), not a "
            f"{type(model).__name__}"
        )
    if isinstance(model, OnnxModel):
        raise ConfigError(f"{model.path} is already ONNX; export from the PyTorch checkpoint")
    model = copy.deepcopy(model).float().cpu().eval()
    if dynamic_img_size and isinstance(model.cfg, ViTConfig) and not model.cfg.dynamic_img_size:
        model.cfg = replace(model.cfg, dynamic_img_size=True)  # resample to any grid
    return model


def _trace(
    model: nn.Module, example: torch.Tensor, path: Path, dynamic_img_size: bool, opset: int | None
) -> None:
    """torch.onnx.export through torch.export. A model the exporter cannot express is refused
    with the exporter's own reason."""
    batch = torch.export.Dim("batch", min=1)
    dims: dict[int, Any] = {0: batch}
    if dynamic_img_size:
        dims |= {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    try:
        with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes={"x": dims},
                opset_version=opset,
                verbose=False,
            )
            program.save(str(path))
    except Exception as e:  # the exporter raises many types; the reason is in the message
        reason = _first_line(e)
        raise ConfigError(
            f"ONNX cannot express this {type(model).__name__}"
            f"{' with dynamic image size' if dynamic_img_size else ''}: {reason}"
            + (
                "; export at a fixed size (leave out --dynamic-img-size)"
                if dynamic_img_size
                else ""
            )
        ) from None


def opset_of(proto: Any) -> int:
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _settle_opset(path: Path, asked: int | None, dynamic_img_size: bool) -> int:
    """The opset written. torch's exporter writes its own lowest opset (18) when asked for an
    older one it cannot convert to; then ONNX's version converter says why, and the export is
    refused with that reason."""
    import onnx

    proto = onnx.load(str(path))
    written = opset_of(proto)
    if asked is None or written <= asked:
        return written
    try:
        converted = onnx.version_converter.convert_version(proto, asked)
        if asked < 18:
            _drop_reduce_noop(converted)
        onnx.checker.check_model(converted)
    except Exception as e:  # the converter's C++ assertion says which operator and why
        reason = _first_line(e) if isinstance(e, onnx.checker.ValidationError) else str(e)
        reason = reason.split("failed: ")[-1].strip().rstrip(".")
        hint = (
            " (the position-embedding resampling of --dynamic-img-size needs it)"
            if dynamic_img_size and "Resize" in reason
            else ""
        )
        raise ConfigError(
            f"ONNX opset {asked} cannot express this model: {reason}{hint}; export with opset "
            f"{written} or later" + (", or at a fixed size" if dynamic_img_size else "")
        ) from None
    onnx.save(converted, str(path))
    return asked


def _drop_reduce_noop(proto: Any) -> None:
    """ONNX's version converter takes opset 18's Reduce* (axes an input) down to 17 (axes an
    attribute) but keeps `noop_with_empty_axes`, which opset 17's ReduceMean and friends lack
    (ONNX Runtime refuses the graph). With axes given, the attribute changes nothing: drop it.
    (ReduceSum has had axes as an input, and the attribute, since opset 13.)"""
    for node in proto.graph.node:
        if not node.op_type.startswith("Reduce") or node.op_type == "ReduceSum":
            continue
        attrs = {a.name: a for a in node.attribute}
        if "noop_with_empty_axes" in attrs and "axes" in attrs and attrs["axes"].ints:
            node.attribute.remove(attrs["noop_with_empty_axes"])


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """The exporter's per-pass notes and its opset warning; vitlab says what matters."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:400]


def _write_metadata(path: Path, model: nn.Module, dynamic_img_size: bool) -> None:
    import onnx

    proto = onnx.load(str(path))
    props = {
        "format": FORMAT,
        "vitlab_version": __version__,
        "torch_version": torch.__version__,
        "config": config_to_json(model.cfg),
        "interpolation": model.data_config["interpolation"],
        "preprocessing": json.dumps(preprocess_of(model).recipe()),
        "class_names": json.dumps([label_of(model, i) for i in range(model.cfg.num_classes)]),
        "params": str(model.num_params()),
        "dynamic_img_size": json.dumps(dynamic_img_size),
        "quantization": "none",
    }
    set_metadata(proto, props)
    proto.doc_string = f"vitlab {type(model).__name__}: {describe_config(model.cfg)}"
    onnx.save(proto, str(path))


def set_metadata(proto: Any, props: Mapping[str, str]) -> None:
    """Replace the model's metadata_props entries named in `props`."""
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file (the graph's weights are not read)."""
    onnx = require("onnx", "onnx", "Reading an ONNX file")

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise CheckpointError(f"{path} is not a readable ONNX file ({_first_line(e)})") from None
    return {p.key: p.value for p in proto.metadata_props}


def describe_config(cfg: AnyConfig) -> str:
    """A short line of what the model takes and tells apart."""
    more = ", ..." if cfg.class_names and len(cfg.class_names) > 4 else ""
    names = f" ({', '.join(cfg.class_names[:4])}{more})" if cfg.class_names else ""
    return f"{cfg.img_size} px, {cfg.in_chans} channel(s), {cfg.num_classes} classes{names}"


def check_export(
    model: nn.Module, path: Path, dynamic_img_size: bool
) -> tuple[float, tuple[int, ...]]:
    """Run the export in ONNX Runtime on random batches of 3 (at the native size, and with a
    dynamic size also at 1.5x and 0.5x) and return the largest |logit difference| to PyTorch.

    fp32 error is measured against an fp64 run of the model: the export is refused when ONNX
    Runtime is further from it than FP32_MARGIN times PyTorch fp32's own distance, plus
    FP32_FLOOR of the logits' scale. A fixed threshold refused correct graphs whose logits are
    large (a hybrid's at 1e-4) while a wrong weight or operator is off by far more."""
    session = new_session(path, threads=None)
    cfg = model.cfg
    sizes = [cfg.img_size]
    if dynamic_img_size:
        s = cfg.feature_stride if isinstance(cfg, ViTConfig) else cfg.reduction
        sizes += [max(s, round(cfg.img_size * f / s) * s) for f in (1.5, 0.5)]
    exact = copy.deepcopy(model).double()
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for size in dict.fromkeys(sizes):
        x = torch.randn(3, cfg.in_chans, size, size, generator=gen)
        with torch.inference_mode():
            want = model(x).float().numpy()
            ref = exact(x.double()).numpy()
        got = session.run(None, {INPUT: x.numpy()})[0]
        worst = max(worst, float(np.abs(want - got).max()))
        _refuse_beyond_fp32(*(float(np.abs(a).max()) for a in (got - ref, want - ref, ref)))
    return worst, tuple(dict.fromkeys(sizes))


def _refuse_beyond_fp32(onnx_err: float, torch_err: float, scale: float) -> None:
    """A CheckpointError when ONNX Runtime's distance to fp64 is more than fp32 explains."""
    allowed = FP32_MARGIN * torch_err + FP32_FLOOR * max(scale, 1.0)
    if onnx_err > allowed:
        raise CheckpointError(
            f"the ONNX export is {onnx_err:.2e} from an fp64 PyTorch run in the logits, where "
            f"PyTorch fp32 is {torch_err:.2e} from it (allowed: {allowed:.2e}); that is more "
            "than fp32 rounding, so it was not written. Please report this with the model's "
            "config"
        )


# ------------------------------------------------------------------------------------ running
def new_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation, `threads` intra-op threads
    (default: torch's thread count, i.e. OMP_NUM_THREADS), one inter-op thread, and threads
    that sleep when idle. ONNX Runtime's threads spin after each run by default, which keeps
    every core busy and slows whatever runs next in the process (decoding, a server's event
    loop, PyTorch): ViT-S/16 int8 at batch 1 ran at 35 img/s spinning, 67 without, taking turns
    with PyTorch on 2 cores; alone it ran 6% faster spinning (72 against 67)."""
    require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CheckpointError(f"ONNX Runtime cannot load {path}: {_first_line(e)}") from None


class GraphModel(nn.Module, VitlabModule):
    """A runtime graph vitlab exported (ONNX, OpenVINO IR), usable wherever vitlab takes a
    model: `model(images)` gives (B, num_classes) logits as a torch tensor, `model.cfg` and
    `model.data_config` are the exported model's, read from the file's metadata. It holds no
    parameters (the weights are in the runtime) and runs on the CPU only; attention maps need
    the PyTorch checkpoint. Subclasses run the graph (`_run`)."""

    label = "a runtime graph"  # as messages name it: "an ONNX graph"
    runner = "its runtime"  # what runs it: "ONNX Runtime's CPU provider"

    def _read_metadata(self, path: Path, meta: dict[str, str], source: str) -> None:
        """The config and facts of the metadata vitlab wrote into the file at `path`."""
        self.path, self.metadata = Path(path), meta
        self.cfg = config_from_dict(json.loads(meta["config"]))
        self.cfg.extra.update(source=source, loaded_from=str(self.path))
        self.interpolation = meta.get("interpolation", "bicubic")
        self.quantization = meta.get("quantization", "none")
        self.dynamic_img_size = json.loads(meta.get("dynamic_img_size", "false"))
        self._params = int(meta.get("params", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float images -> (B, num_classes) float32 logits."""
        if x.device.type != "cpu":
            raise ConfigError(f"{self.label} runs on the CPU; give it CPU tensors")
        size = self.cfg.img_size
        if not self.dynamic_img_size and tuple(x.shape[-2:]) != (size, size):
            raise ConfigError(
                f"{self.path.name} was exported for {size}x{size} px input, got "
                f"{x.shape[-2]}x{x.shape[-1]}; resize the input or export with --dynamic-img-size"
            )
        return self._run(x.detach().float().contiguous().numpy())

    def _run(self, feed: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def to(self, *args: Any, **kwargs: Any) -> GraphModel:
        device, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(
                f"{self.path.name} runs on {self.runner}; use --device cpu (or the PyTorch "
                "checkpoint for a GPU)"
            )
        if dtype is not None and dtype != torch.float32:
            raise ConfigError(f"{self.path.name} takes float32 input; it cannot be cast")
        return self

    def num_params(self, trainable_only: bool = False) -> int:
        """The parameter count of the model it was exported from."""
        return self._params

    def extra_repr(self) -> str:
        return f"{self.path.name}, {describe_config(self.cfg)}, quantization {self.quantization}"


class OnnxModel(GraphModel):
    """A vitlab `.onnx` file run by ONNX Runtime's CPU provider (`GraphModel`)."""

    label = "an ONNX graph"
    runner = "ONNX Runtime's CPU provider"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        meta = read_metadata(path)
        if meta.get("format") != FORMAT or "config" not in meta:
            raise CheckpointError(
                f"{path} is an ONNX file vitlab did not write (no vitlab config in its "
                "metadata); export it with `vitlab convert CHECKPOINT OUT.onnx --to onnx`"
            )
        self._read_metadata(Path(path), meta, "onnx")
        self.session = new_session(self.path, threads)

    def _run(self, feed: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {INPUT: feed})[0])


def load_onnx(path: str | Path, threads: int | None = None, **overrides: Any) -> OnnxModel:
    """`OnnxModel(path)`; config overrides cannot apply to a graph, so they are refused."""
    if overrides:
        raise ConfigError(
            f"{path} is ONNX, whose graph is fixed: {', '.join(sorted(overrides))} cannot be "
            "changed; change them on the PyTorch checkpoint and export again"
        )
    return OnnxModel(path, threads)
