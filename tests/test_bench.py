"""`vitlab.bench` and `vitlab bench`: FLOP counts against torch's counter, the timm twin,
the JSON output and the user-facing errors. Nothing here asserts on time."""

import json
import sys

import pytest
import torch

import vitlab
from vitlab import bench
from vitlab.cli.main import main


def _bench_json(capsys, *args):
    code = main(["bench", "--model", "vit_test", "--batch", "2", "--iters", "2", *args])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bench_json_parses_and_is_consistent(capsys, mode):
    pytest.importorskip("timm")
    r = _bench_json(capsys, "--warmup", "1", "--mode", mode, "--vs", "timm", "--json")
    model = vitlab.create_model("vit_test")
    flops = bench.flops_per_image(model.cfg, mode)
    assert r["gflops_per_img"] == pytest.approx(flops / 1e9, rel=1e-5)
    assert r["achieved_gflops"] == pytest.approx(r["img_s"] * r["gflops_per_img"], rel=1e-3)
    assert r["utilization"] == pytest.approx(r["achieved_gflops"] / r["peak_gflops"], rel=1e-3)
    assert r["ratio"] == pytest.approx(r["img_s"] / r["timm_img_s"], rel=1e-3)
    assert len(r["step_times_s"]) == len(r["timm_step_times_s"]) == 2
    assert r["peak_memory_mb"] > 0 and r["threads"] == torch.get_num_threads()


def test_bench_bf16_without_timm_has_no_timm_fields(capsys):
    r = _bench_json(capsys, "--warmup", "0", "--precision", "bf16", "--json")
    assert r["precision"] == "bf16" and r["timm_img_s"] is None and r["ratio"] is None
    assert r["img_s"] > 0 and r["peak_gflops"] > 0


def test_bench_text_output(capsys):
    assert main(["bench", "--model", "vit_test", "--batch", "2", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    assert "img/s" in out and "matmul peak" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch", "0"], "--batch"),
        (["--model", "vit_tset"], "did you mean"),
        (["--compile", "--warmup", "0"], "--warmup"),
        (["--img-size", "30"], "patch size"),
        (["--backend", "onnx", "--precision", "bf16"], "leave out"),
        (["--backend", "onnx-int8", "--device", "cuda"], "CPU provider"),
    ],
)
def test_user_mistakes_are_one_line_errors(capsys, args, needle):
    assert main(["bench", "--model", "vit_test", "--iters", "1", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vitlab bench: error:") and needle in err[-1]


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_backends_run_beside_timm(capsys, backend):
    pytest.importorskip("onnxruntime")
    r = _bench_json(capsys, "--warmup", "1", "--backend", backend, "--vs", "timm", "--json")
    assert r["backend"] == "onnx" and r["timm_img_s"] > 0 and r["ratio"] > 0
    assert (r["quantization"] == "none") == (backend == "onnx")
    assert "dynamic" in r["quantization"] or backend == "onnx"


def test_an_onnx_checkpoint_is_timed_as_it_is(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitlab.weights.onnx import export_onnx

    export_onnx(vitlab.create_model("vit_test", num_classes=3), tmp_path / "m.onnx")
    args = ["--checkpoint", str(tmp_path / "m.onnx"), "--vs", "timm", "--json"]
    r = _bench_json(capsys, *args)
    assert r["model"] == str(tmp_path / "m.onnx") and r["backend"] == "onnx"
    assert r["timm_img_s"] > 0
    assert main(["bench", "--checkpoint", str(tmp_path / "m.onnx"), "--mode", "train"]) == 2
    assert "leave out" in capsys.readouterr().err
    assert main(["bench", "--checkpoint", str(tmp_path / "m.onnx"), "--backend", "onnx"]) == 2
    assert "as it is" in capsys.readouterr().err


def test_missing_timm_says_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)  # import fails
    assert main(["bench", "--model", "vit_test", "--iters", "1", "--vs", "timm"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'vitlab[timm]'" in err and len(err.strip().splitlines()) == 1


def test_published_peaks_pick_the_right_gpu(monkeypatch):
    cuda = torch.device("cuda")
    seen = {}
    for name in ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA H200 NVL"]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        seen[name] = bench.published_peak_gflops(cuda, "bf16")
    assert seen["NVIDIA H100 80GB HBM3"] == seen["NVIDIA H200"]  # same tensor cores
    assert seen["NVIDIA H100 PCIe"] < seen["NVIDIA H100 80GB HBM3"]  # lower clocks and power
    assert seen["NVIDIA H200 NVL"] < seen["NVIDIA H200"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some Other GPU")
    assert bench.published_peak_gflops(cuda, "bf16") is None
    assert bench.published_peak_gflops(torch.device("cpu"), "bf16") is None


@pytest.mark.parametrize(("measured", "mode"), [("bf16", "infer"), ("fp32", "train")])
def test_bench_precision_auto_times_what_auto_chooses(capsys, monkeypatch, measured, mode):
    from vitlab.runtime import precision

    monkeypatch.setattr(precision, "_chosen", {})
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    rates = {"fp32": 100.0, "bf16": 300.0 if measured == "bf16" else 90.0}
    real = precision._measure_choice
    monkeypatch.setattr(precision, "_measure_choice",
                        lambda device, read, rounds: real(device, rates.get, rounds))  # fmt: skip
    r = _bench_json(capsys, "--warmup", "0", "--precision", "auto", "--mode", mode, "--json")
    assert r["precision"] == measured


def test_backend_all_lists_every_path_and_names_the_fastest(capsys):
    pytest.importorskip("onnxruntime")
    assert main(["bench", "--model", "vit_test", "--backend", "all", "--batch", "2", "--iters",
                 "2", "--warmup", "1", "--json"]) == 0  # fmt: skip
    r = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in r["paths"]] == [name for name, *_ in bench.PATHS]
    measured = [p for p in r["paths"] if p["img_s"] is not None]
    assert {"torch fp32", "onnx fp32", "onnx int8"} <= {p["name"] for p in measured}
    for p in measured:
        assert p["skipped"] is None and p["utilization"] > 0
        assert p["utilization"] == pytest.approx(
            p["img_s"] * r["gflops_per_img"] / r["peaks_gflops"][p["precision"]], rel=1e-6
        )
        if r["timm_img_s"] is not None:
            assert p["ratio_timm"] == pytest.approx(p["img_s"] / r["timm_img_s"], rel=1e-6)
    assert all(p["skipped"] for p in r["paths"] if p["img_s"] is None)
    assert r["fastest"] == max(measured, key=lambda p: p["img_s"])["name"]
    assert r["peaks_gflops"]["int8"] > 0


def test_backend_all_skips_a_missing_backend_with_the_install_line(capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr(bench, "can_compile", lambda device: False)  # quicker
    assert main(["bench", "--model", "vit_test", "--backend", "all", "--batch", "2", "--iters",
                 "1", "--warmup", "0"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for name in ("openvino fp32", "openvino bf16", "openvino int8"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        assert "skipped: openvino" in line and "pip install 'vitlab[openvino]'" in line
    assert "torch fp32 compiled" in out and "torch.compile needs a C++ compiler" in out
    assert "<- fastest" in out


def test_backend_all_refuses_what_it_measures_itself(capsys):
    assert main(["bench", "--model", "vit_test", "--backend", "all", "--precision", "bf16"]) == 2
    assert "leave out --precision" in capsys.readouterr().err
