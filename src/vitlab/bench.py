"""Throughput and hardware utilisation of a model, side by side with timm's identical one.

What `vitlab bench` and `benchmarks/speed.py` measure:

- img/s: the median over timed iterations after warm-up; with `vs_timm=True` the two models
  take turns (vitlab, timm, vitlab, timm, ...) in one process, so both see the same machine.
- FLOPs per image from the config (`vit_flops`: every matmul, attention included); a training
  step counts the forward, the gradient of every input and the gradient of every weight
  (3x the forward, less the image's gradient, which nobody needs).
- Utilisation: achieved FLOP/s over the peak of a large matmul in the same dtype, measured in
  the same run; on a GPU also over the vendor's published dense peak.
"""

from __future__ import annotations

import contextlib
import math
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.config import ViTConfig
from vitlab.models.flops import Mode, flops_per_image
from vitlab.models.registry import build_model, create_model
from vitlab.runtime.device import (
    can_compile,
    device_name,
    keep_freed_memory,
    pick_device,
    synchronize,
)
from vitlab.runtime.kernels import PackedWeights
from vitlab.runtime.precision import (
    DTYPES,
    autocast,
    in_precision,
    inference_precision,
    matmul_peak_gflops,
    native_bf16,
    resolve_precision,
    weights_dtype,
)
from vitlab.weights.checkpoint import load_checkpoint
from vitlab.weights.formats import runtime_graph
from vitlab.weights.onnx import GraphModel, OnnxModel, export_onnx
from vitlab.weights.quantize import quantize_onnx
from vitlab.weights.timm import timm_twin

# Published dense peaks (no sparsity) in TFLOP/s, from NVIDIA's data sheets. fp32 is the
# non-tensor-core figure: PyTorch leaves TF32 off for matmuls by default. Matched in order
# against `torch.cuda.get_device_name()`.
GPU_PEAK_TFLOPS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("H200", "NVL"), {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    (("H200",), {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    (("H100", "PCIe"), {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2}),
    (("H100", "NVL"), {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    (("H100",), {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    (("A100",), {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
]


Backend = Literal["torch", "onnx", "onnx-int8"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "onnx-int8")


@dataclass
class BenchSpec:
    """What to measure: one model, one batch shape, one mode and precision, one backend
    (PyTorch, or the model exported to ONNX and run by ONNX Runtime, fp32 or int8)."""

    model: str = "vit_s16"
    checkpoint: str | None = None  # time this file (.onnx too) instead of a fresh variant
    backend: Backend = "torch"
    int8: str = "dynamic"  # onnx-int8: "dynamic" or "static" (calibrated on random images)
    batch: int = 16
    img_size: int | None = None  # None: the variant's own resolution
    in_chans: int | None = None  # None: the variant's own channel count
    mode: Mode = "infer"
    precision: str = "fp32"  # fp32, bf16, fp16 (training on a GPU) or auto
    compile: bool = False
    vs_timm: bool = False
    warmup: int = 2
    iters: int = 10
    device: str | None = None  # None: CUDA when available, else CPU (runtime.pick_device)
    seed: int = 0
    keep_freed_memory: bool = True  # glibc keeps freed blocks (CPU; see keep_freed_memory)

    def check(self) -> None:
        """Refuse values that cannot be measured, with what to do instead."""
        if self.batch < 1:
            raise ConfigError(f"--batch must be at least 1, got {self.batch}")
        if self.iters < 1 or self.warmup < 0:
            raise ConfigError(
                f"need --iters >= 1 and --warmup >= 0, got {self.iters} and {self.warmup}"
            )
        if self.mode not in ("infer", "train"):
            raise ConfigError(f"--mode must be 'infer' or 'train', got {self.mode!r}")
        if self.precision not in (*DTYPES, "auto"):
            raise ConfigError(f"--precision must be one of {', '.join(DTYPES)} or auto")
        if self.compile and self.warmup < 1:
            raise ConfigError("--compile needs --warmup 1 or more: the first call compiles")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}")
        if self.on_onnx:
            self._check_onnx(runtime_graph(self.checkpoint) is not None)

    @property
    def on_onnx(self) -> bool:
        """Whether ONNX Runtime runs the model (an ONNX backend, or an .onnx checkpoint)."""
        return self.backend != "torch" or runtime_graph(self.checkpoint) is not None

    def _check_onnx(self, onnx_file: bool) -> None:
        graph = runtime_graph(self.checkpoint)
        what = f"an {graph.suffixes[0]} checkpoint" if onnx_file else f"--backend {self.backend}"
        bf16_ok = graph is not None and graph.name == "openvino" and self.precision == "bf16"
        if self.mode != "infer" or (self.precision != "fp32" and not bf16_ok) or self.compile:
            runner = graph.runner if graph is not None else "ONNX Runtime"
            also = " (bf16 is for an OpenVINO IR)" if self.precision == "bf16" else ""
            raise ConfigError(
                f"{what} times inference of float32 input with {runner}: leave out "
                f"--mode train, --precision{also} and --compile"
            )
        if self.device not in (None, "auto", "cpu"):
            raise ConfigError(f"{what} runs on ONNX Runtime's CPU provider: use --device cpu")
        if onnx_file and self.backend != "torch":
            raise ConfigError("an .onnx checkpoint is timed as it is: leave out --backend")
        if self.int8 not in ("static", "dynamic"):
            raise ConfigError(f"--int8 must be static or dynamic, got {self.int8!r}")


@dataclass
class BenchResult:
    """One measurement; `to_dict()` is what `vitlab bench --json` prints."""

    model: str
    mode: str
    precision: str
    backend: str
    quantization: str
    batch: int
    img_size: int
    compile: bool
    device: str
    device_name: str
    threads: int
    img_s: float
    gflops_per_img: float
    achieved_gflops: float
    peak_gflops: float
    utilization: float
    peak_memory_mb: float
    memory_kind: str
    allocator_tuned: bool = False
    published_peak_gflops: float | None = None
    published_utilization: float | None = None
    timm_img_s: float | None = None
    ratio: float | None = None
    timm_utilization: float | None = None
    timm_peak_memory_mb: float | None = None
    iters: int = 0
    step_times_s: list[float] = field(default_factory=list)
    timm_step_times_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------- peaks
def published_peak_gflops(device: torch.device, precision: str) -> float | None:
    """The vendor's dense peak for a known GPU, in GFLOP/s (None for CPUs and unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for needles, peaks in GPU_PEAK_TFLOPS:
        if all(n.lower() in name.lower() for n in needles):
            return peaks[precision] * 1e3
    return None


# ---------------------------------------------------------------------------------- models
def build_models(spec: BenchSpec, device: torch.device) -> dict[str, nn.Module]:
    """vitlab's model (and timm's twin with the same weights) on `device`; for an ONNX backend
    the model is exported (and quantised) first and run by ONNX Runtime."""
    overrides: dict[str, Any] = {}
    if spec.img_size is not None:
        overrides["img_size"] = spec.img_size
    if spec.in_chans is not None:
        overrides["in_chans"] = spec.in_chans
    torch.manual_seed(spec.seed)
    if spec.checkpoint is not None:
        model = load_checkpoint(spec.checkpoint, **overrides)
    else:
        model = create_model(spec.model, **overrides)
    if not isinstance(getattr(model, "cfg", None), ViTConfig):
        name = spec.checkpoint or repr(spec.model)
        raise ConfigError(f"{name} is not a Vision Transformer; bench a ViT")
    # an ONNX file's twin gets fresh weights: the same architecture computes as fast
    torch_model = build_model(model.cfg) if is_graph(model) else model
    models = {"vitlab": model}
    if spec.vs_timm:
        models["timm"] = timm_twin(torch_model)
    if spec.backend != "torch":
        models["vitlab"] = onnx_runner(torch_model, spec)
    return {k: m.to(device) for k, m in models.items()}


def is_graph(model: nn.Module) -> bool:
    """Whether `model` is a runtime graph (ONNX Runtime, OpenVINO) rather than torch weights."""
    return isinstance(model, GraphModel)


def graph_backend(model: nn.Module) -> str:
    """The backend that runs `model`: "torch", or its graph's format ("onnx", "openvino")."""
    return model.cfg.extra["source"] if is_graph(model) else "torch"


def onnx_runner(model: nn.Module, spec: BenchSpec) -> OnnxModel:
    """`model` exported to ONNX (and for onnx-int8 quantised: statically with 16 random
    calibration images, which set the same kernels as real ones, or dynamically) and loaded
    into ONNX Runtime."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path)
        if spec.backend == "onnx-int8":
            cfg = model.cfg
            gen = np.random.default_rng(spec.seed)
            shape = (8, cfg.in_chans, cfg.img_size, cfg.img_size)
            batches = [gen.standard_normal(shape, dtype=np.float32) for _ in range(2)]
            int8 = Path(tmp) / "int8.onnx"
            quantize_onnx(path, int8, method=spec.int8, calibration=batches)  # type: ignore[arg-type]
            path = int8
        return OnnxModel(path)  # the session holds the graph; the file can go


# ----------------------------------------------------------------------------------- steps
def make_step(
    model: nn.Module, cfg: ViTConfig, spec: BenchSpec, device: torch.device
) -> Callable[[], torch.Tensor]:
    """A closure running one inference batch or one full training step on fixed data.

    Inference runs the weights in the benchmark's dtype under `torch.inference_mode`; training
    keeps fp32 weights with autocast, cross-entropy, backward and a foreach AdamW step."""
    size = cfg.img_size
    gen = torch.Generator().manual_seed(spec.seed)
    x = torch.randn(spec.batch, cfg.in_chans, size, size, generator=gen).to(device)
    y = torch.randint(0, max(cfg.num_classes, 1), (spec.batch,), generator=gen).to(device)
    fn: Callable[[torch.Tensor], torch.Tensor] = model
    if is_graph(model):  # ONNX Runtime or OpenVINO (compiled in bf16 when asked)
        graph = in_precision(model, spec.precision)

        def run_graph() -> torch.Tensor:
            return graph(x)

        return run_graph
    if spec.mode == "infer":
        dtype = DTYPES[spec.precision]
        model.eval().to(dtype)
        x = x.to(dtype)
        if spec.compile:
            fn = torch.compile(model, fullgraph=True)

        packs = PackedWeights()  # as `vitlab eval` and `predict` run it

        def infer() -> torch.Tensor:
            with torch.inference_mode(), packs:
                return fn(x)

        return infer
    return _train_step(model, spec, device, x, y)


def _train_step(
    model: nn.Module, spec: BenchSpec, device: torch.device, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], torch.Tensor]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    scaler = torch.amp.GradScaler(device.type, enabled=spec.precision == "fp16")
    fn: Callable[[torch.Tensor], torch.Tensor] = model
    if spec.compile:
        fn = torch.compile(model, fullgraph=True)

    def train() -> torch.Tensor:
        with autocast(device, spec.precision):
            loss = F.cross_entropy(fn(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return train


# ---------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of the steps run between `reset()` and `read()`: allocated tensors on a GPU,
    the process's resident set (VmHWM, reset through /proc/self/clear_refs) on Linux CPUs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_allocated" if device.type == "cuda" else "process_rss"
        self._resettable = Path("/proc/self/clear_refs").exists()
        if device.type == "cpu" and not self._resettable:
            self.kind = "process_max_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._resettable:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> float:
        """Megabytes (2^20 bytes)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._resettable:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# ------------------------------------------------------------------------------- measuring
def time_interleaved(
    steps: dict[str, Callable[[], torch.Tensor]],
    spec: BenchSpec,
    device: torch.device,
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Warm every step up, then time them in turns (the order flipping every round); per-step
    times and peak memory (MB)."""
    mem = PeakMemory(device)
    peaks = dict.fromkeys(steps, 0.0)
    for _ in range(spec.warmup):
        for name, step in steps.items():
            mem.reset()
            step()
            synchronize(device)
            peaks[name] = max(peaks[name], mem.read())
    times: dict[str, list[float]] = {name: [] for name in steps}
    rounds = iter(range(spec.iters))
    for i in progress(rounds) if progress else rounds:
        order = list(steps.items())
        for name, step in order if i % 2 == 0 else order[::-1]:  # A B, B A: no order bias
            mem.reset()
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], mem.read())
    return times, peaks


def run_bench(
    spec: BenchSpec, progress: Callable[[Iterator[int]], Iterator[int]] | None = None
) -> BenchResult:
    """Build the model(s), measure the matmul peak (before and after the steps, the higher
    counts), time the steps and put the figures together (see the module docstring)."""
    spec.check()
    device = torch.device("cpu") if spec.on_onnx else pick_device(spec.device)  # CPU provider
    if spec.precision == "auto":  # as `predict`/`eval`/`serve` (inference) or `train` choose
        pick = inference_precision if spec.mode == "infer" else resolve_precision
        spec = replace(spec, precision=pick("auto", device))
    tuned = device.type == "cpu" and spec.keep_freed_memory and keep_freed_memory()
    models = build_models(spec, device)
    cfg: ViTConfig = models["vitlab"].cfg
    steps = {name: make_step(m, cfg, spec, device) for name, m in models.items()}
    peak = matmul_peak_gflops(device, DTYPES[spec.precision])
    times, mem = time_interleaved(steps, spec, device, progress)
    # Measured again after the steps: a busy moment can only lower a reading, so the higher
    # one is the better estimate of what the machine can do.
    peak = max(peak, matmul_peak_gflops(device, DTYPES[spec.precision]))
    flops = flops_per_image(cfg, spec.mode)
    img_s = spec.batch / statistics.median(times["vitlab"])
    achieved = img_s * flops / 1e9
    published = published_peak_gflops(device, spec.precision)
    model = models["vitlab"]
    result = BenchResult(
        model=spec.checkpoint or spec.model,
        mode=spec.mode,
        precision=spec.precision,
        backend=graph_backend(model),
        quantization=getattr(model, "quantization", "none"),
        batch=spec.batch,
        img_size=cfg.img_size,
        compile=spec.compile,
        device=device.type,
        device_name=device_name(device),
        threads=torch.get_num_threads(),
        img_s=img_s,
        gflops_per_img=flops / 1e9,
        achieved_gflops=achieved,
        peak_gflops=peak,
        utilization=achieved / peak,
        peak_memory_mb=mem["vitlab"],
        memory_kind=PeakMemory(device).kind,
        allocator_tuned=tuned,
        published_peak_gflops=published,
        published_utilization=achieved / published if published else None,
        iters=spec.iters,
        step_times_s=times["vitlab"],
    )
    if "timm" in times:
        timm_img_s = spec.batch / statistics.median(times["timm"])
        result.timm_img_s = timm_img_s
        result.ratio = img_s / timm_img_s
        result.timm_utilization = timm_img_s * flops / 1e9 / peak
        result.timm_peak_memory_mb = mem["timm"]
        result.timm_step_times_s = times["timm"]
    return result


def format_result(r: BenchResult) -> str:
    """A short human-readable summary of one measurement."""
    how = (
        f"{r.precision}"
        if r.backend == "torch"
        else "ONNX Runtime " + ("fp32" if r.quantization == "none" else r.quantization)
    )
    lines = [
        f"{r.model} {r.mode} {how} batch {r.batch} at {r.img_size} px"
        f"{' (compiled)' if r.compile else ''} on {r.device_name} ({r.threads} threads)",
        f"  vitlab     {r.img_s:9.2f} img/s   {r.achieved_gflops:8.1f} GFLOP/s   "
        f"{r.utilization:6.1%} of the measured {r.peak_gflops:.0f} GFLOP/s {r.precision} "
        f"matmul peak",
        f"  FLOPs      {r.gflops_per_img:9.3f} GFLOP per image "
        f"({'3x forward less the image gradient' if r.mode == 'train' else 'forward'})",
        f"  memory     {r.peak_memory_mb:9.0f} MB peak ({r.memory_kind.replace('_', ' ')})",
    ]
    if r.published_peak_gflops:
        lines.append(
            f"  published  {r.published_utilization:9.1%} of the data-sheet peak "
            f"({r.published_peak_gflops / 1e3:.0f} TFLOP/s dense {r.precision})"
        )
    if r.timm_img_s is not None and r.ratio is not None:
        lines.append(
            f"  timm       {r.timm_img_s:9.2f} img/s   ratio vitlab/timm {r.ratio:.3f}x "
            f"(medians of {r.iters} interleaved iterations)"
        )
    return "\n".join(lines)


def round_floats(d: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """The same dict with floats rounded to `digits` significant figures (for printing)."""

    def rnd(v: Any) -> Any:
        if isinstance(v, float) and v and math.isfinite(v):
            return round(v, max(0, digits - 1 - math.floor(math.log10(abs(v)))))
        if isinstance(v, list):
            return [rnd(u) for u in v]
        return v

    return {k: rnd(v) for k, v in d.items()}


# ------------------------------------------------------------------ every backend, in turns
@dataclass
class PathResult:
    """One deployment path of `bench_all`: img/s, the ratio to timm fp32 and the share of the
    matmul peak of its number format (fp32, bf16 or int8, each measured here); or why it was
    skipped."""

    name: str  # "torch bf16 compiled", "openvino int8", ...
    backend: str  # torch, onnx, openvino
    precision: str  # fp32, bf16, int8: the matmuls' format, whose peak it is held to
    compiled: bool = False
    img_s: float | None = None
    ratio_timm: float | None = None
    utilization: float | None = None
    skipped: str | None = None  # why it was not measured, with the fix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AllResult:
    """`bench_all`: every path on one model and batch, and the fastest."""

    model: str
    batch: int
    img_size: int
    device_name: str
    threads: int
    iters: int
    gflops_per_img: float
    peaks_gflops: dict[str, float]
    timm_img_s: float | None
    paths: list[PathResult]

    @property
    def fastest(self) -> PathResult:
        measured = [p for p in self.paths if p.img_s is not None]
        return max(measured, key=lambda p: p.img_s or 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fastest"] = self.fastest.name
        return d


def int8_matmul_peak_gflops(size: int = 2048, reps: int = 5) -> float:
    """The CPU's practical int8 matmul peak (GOP/s counted as GFLOP/s): the faster of PyTorch's
    `torch._int_mm` and ONNX Runtime's MatMulInteger (VNNI/AMX where the CPU has them), the
    median of `reps` timed runs of a square `size`^3 product each."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-128, 127, (size, size), generator=g, dtype=torch.int8) for _ in "ab")
    runs: list[Callable[[], Any]] = [lambda: torch._int_mm(a, b)]
    session = _matmul_integer_session(size)
    if session is not None:
        feed = {"A": np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8)}
        runs.append(lambda: session.run(None, feed))
    best = 0.0
    for run in runs:
        run()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        best = max(best, 2 * size**3 / statistics.median(times) / 1e9)
    return best


def _matmul_integer_session(size: int) -> Any:
    """An ONNX Runtime session of one u8 x s8 MatMulInteger, or None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None

    w = np.random.default_rng(1).integers(-128, 127, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "W"], ["Y"])],
        "int8_peak",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# name, backend, precision, compiled: every path `bench_all` tries, in the order it lists them
PATHS: tuple[tuple[str, str, str, bool], ...] = (
    ("torch fp32", "torch", "fp32", False),
    ("torch bf16", "torch", "bf16", False),
    ("torch fp32 compiled", "torch", "fp32", True),
    ("torch bf16 compiled", "torch", "bf16", True),
    ("onnx fp32", "onnx", "fp32", False),
    ("onnx int8", "onnx", "int8", False),
    ("openvino fp32", "openvino", "fp32", False),
    ("openvino bf16", "openvino", "bf16", False),
    ("openvino int8", "openvino", "int8", False),
)
EXTRA_OF = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}


def _installed(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _why_skipped(backend: str, precision: str, compiled: bool, device: torch.device) -> str | None:
    """Why a path cannot be measured here (with the fix), or None."""
    if backend in EXTRA_OF:
        module, extra = EXTRA_OF[backend]
        needs = [module, *(["nncf"] if backend == "openvino" and precision == "int8" else [])]
        missing = [m for m in needs if not _installed(m)]
        if missing:
            return f"{', '.join(missing)} not installed: pip install 'vitlab[{extra}]'"
        if device.type != "cpu":
            return "runs on the CPU only"
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        return "bf16 is emulated on this CPU (no AVX512-BF16 or AMX): slower than fp32"
    if compiled and not can_compile(device):
        return "torch.compile needs a C++ compiler here"
    return None


def _fixed_images(cfg: ViTConfig, spec: BenchSpec) -> torch.Tensor:
    """The random batch every path of `bench_all` (and timm's twin) runs, from `spec.seed`."""
    gen = torch.Generator().manual_seed(spec.seed)
    return torch.randn(spec.batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)


def _path_step(
    model: nn.Module, backend: str, precision: str, compiled: bool, spec: BenchSpec, tmp: Path
) -> Callable[[], torch.Tensor]:
    """One inference batch of `model` on this path, on fixed random images."""
    cfg = model.cfg
    x = _fixed_images(cfg, spec)
    if backend == "torch":
        runner = in_precision(model, precision)
        fn = torch.compile(runner, fullgraph=True) if compiled else runner
        xs, packs = x.to(weights_dtype(runner)), PackedWeights()

        def run_torch() -> torch.Tensor:
            with torch.inference_mode(), packs:
                return fn(xs)

        return run_torch
    if backend == "onnx":
        int8 = replace(spec, backend="onnx-int8" if precision == "int8" else "onnx")
        graph: nn.Module = onnx_runner(model, int8)
    else:
        from vitlab.weights.openvino import export_openvino, load_openvino

        path = tmp / f"{precision}.xml"
        cal = None
        if precision == "int8":  # ranges from random images: they set the same kernels
            gen = np.random.default_rng(spec.seed)
            shape = (8, cfg.in_chans, cfg.img_size, cfg.img_size)
            cal = [gen.standard_normal(shape, dtype=np.float32) for _ in range(2)]
        export_openvino(model, path, quantize="int8" if cal else None, calibration=cal,
                        check=False)  # fmt: skip
        graph = load_openvino(path).with_precision("bf16" if precision == "bf16" else "fp32")

    def run_graph() -> torch.Tensor:
        return graph(x)

    return run_graph


def bench_all(
    spec: BenchSpec,
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None,
    model: nn.Module | None = None,
    skip: Callable[[str], str | None] | None = None,
) -> AllResult:
    """Every deployment path of `PATHS` available here, on one model and batch, timed in turns
    in this process beside timm fp32 (when timm is installed), each held to the measured
    matmul peak of its number format; a path that cannot run here is listed with the reason.
    The model is `spec`'s checkpoint or variant, or `model` when given; `skip(name)` may leave
    more paths out (the reason it returns is listed)."""
    spec = replace(spec, backend="torch", precision="fp32", mode="infer", compile=False)
    spec.check()
    device = pick_device(spec.device)
    if device.type == "cpu" and spec.keep_freed_memory:
        keep_freed_memory()
    model = (model if model is not None else _all_model(spec)).to(device).eval()
    paths, steps = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, backend, precision, compiled in PATHS:
            why = _why_skipped(backend, precision, compiled, device) or (skip and skip(name))
            paths.append(PathResult(name, backend, precision, compiled, skipped=why))
            if why is None:
                steps[name] = _path_step(model, backend, precision, compiled, spec, Path(tmp))
        timm = _timm_step(model, spec)
        if timm is not None:
            steps["timm fp32"] = timm
        times, _ = time_interleaved(steps, spec, device, progress)
    peaks = {"fp32": matmul_peak_gflops(device, torch.float32)}
    if any(p.precision == "bf16" and not p.skipped for p in paths):
        peaks["bf16"] = matmul_peak_gflops(device, torch.bfloat16)
    if any(p.precision == "int8" and not p.skipped for p in paths):
        peaks["int8"] = int8_matmul_peak_gflops()
    flops = flops_per_image(model.cfg, "infer")
    timm_img_s = spec.batch / statistics.median(times["timm fp32"]) if timm else None
    for p in paths:
        if p.name in times:
            p.img_s = spec.batch / statistics.median(times[p.name])
            p.utilization = p.img_s * flops / 1e9 / peaks[p.precision]
            p.ratio_timm = p.img_s / timm_img_s if timm_img_s else None
    return AllResult(
        model=spec.checkpoint or spec.model, batch=spec.batch, img_size=model.cfg.img_size,
        device_name=device_name(device), threads=torch.get_num_threads(), iters=spec.iters,
        gflops_per_img=flops / 1e9, peaks_gflops=peaks, timm_img_s=timm_img_s, paths=paths,
    )  # fmt: skip


def _all_model(spec: BenchSpec) -> nn.Module:
    """The ViT `bench_all` times: `spec`'s PyTorch checkpoint or registry variant."""
    torch.manual_seed(spec.seed)
    overrides = {k: v for k, v in (("img_size", spec.img_size), ("in_chans", spec.in_chans))
                 if v is not None}  # fmt: skip
    if spec.checkpoint is not None and runtime_graph(spec.checkpoint) is not None:
        raise ConfigError(
            "--backend all exports the model to every backend itself: give the PyTorch "
            "checkpoint (or a --model variant), not a graph"
        )
    if spec.checkpoint is not None:
        model = load_checkpoint(spec.checkpoint, **overrides)
    else:
        model = create_model(spec.model, **overrides)
    if not isinstance(getattr(model, "cfg", None), ViTConfig):
        raise ConfigError(
            f"{spec.checkpoint or spec.model} is not a Vision Transformer; bench a ViT"
        )
    return model


def _timm_step(model: nn.Module, spec: BenchSpec) -> Callable[[], torch.Tensor] | None:
    """timm's identical model in fp32, the baseline of every ratio (None without timm)."""
    if not _installed("timm"):
        return None
    twin = timm_twin(model).eval()
    cfg = model.cfg
    x = _fixed_images(cfg, spec)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return twin(x)

    return run


def format_all(r: AllResult) -> str:
    """The table of `vitlab bench --backend all`, the fastest path marked."""
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in r.peaks_gflops.items())
    lines = [
        f"{r.model} inference, batch {r.batch} at {r.img_size} px on {r.device_name} "
        f"({r.threads} threads); medians of {r.iters} rounds taken in turns",
        f"measured matmul peaks, GFLOP/s: {peaks}",
        f"{'path':<22}{'img/s':>9}{'x timm fp32':>13}{'of its peak':>13}",
    ]
    if r.timm_img_s is not None:
        lines.append(f"{'timm fp32':<22}{r.timm_img_s:>9.1f}{1.0:>12.2f}x{'':>13}")
    best = r.fastest.name
    for p in r.paths:
        if p.img_s is None:
            lines.append(f"{p.name:<22}{'-':>9}   skipped: {p.skipped}")
            continue
        ratio = f"{p.ratio_timm:>12.2f}x" if p.ratio_timm is not None else f"{'-':>13}"
        mark = "  <- fastest" if p.name == best else ""
        lines.append(f"{p.name:<22}{p.img_s:>9.1f}{ratio}{p.utilization:>13.1%}{mark}")
    return "\n".join(lines)
