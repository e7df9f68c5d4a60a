"""int8 quantisation of vitlab ONNX files: what it keeps (metadata), what it quantises, and the
refusals. Accuracy on real data is tests/test_deploy.py's."""

import numpy as np
import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.errors import ConfigError
from vitlab.weights.onnx import OnnxModel, export_onnx
from vitlab.weights.quantize import quantize_onnx

pytest.importorskip("onnxruntime")
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("q")
    model = perturb_(vitlab.create_model("vit_test", num_classes=3, class_names=NAMES)).eval()
    export_onnx(model, folder / "fp32.onnx")
    return model, folder


def _calibration(n=2, size=32, chans=3):
    g = np.random.default_rng(0)
    return [g.standard_normal((8, chans, size, size), dtype=np.float32) for _ in range(n)]


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_keeps_the_metadata_and_quantises_the_linears(vit, method, tmp_path):
    model, folder = vit
    cal = _calibration() if method == "static" else None
    r = quantize_onnx(folder / "fp32.onnx", tmp_path / "q.onnx", method=method, calibration=cal)
    q = OnnxModel(tmp_path / "q.onnx")
    assert q.cfg.class_names == NAMES and q.data_config == model.data_config
    assert q.quantization == r.description and r.description.startswith(f"int8 {method}")
    int8_ops = {"dynamic": "MatMulInteger", "static": "QuantizeLinear"}[method]
    assert r.int8_ops.get(int8_ops, 0) >= 2 * model.cfg.depth  # qkv, proj, fc1, fc2 per block
    assert (r.calibration_images == 16) == (method == "static")
    assert q(torch.randn(4, 3, 32, 32)).shape == (4, 3)


def test_refusals(vit, tmp_path):
    _, folder = vit
    src = folder / "fp32.onnx"
    with pytest.raises(ConfigError, match="needs calibration images"):
        quantize_onnx(src, tmp_path / "q.onnx", method="static")
    with pytest.raises(ConfigError, match="must be one of"):
        quantize_onnx(src, tmp_path / "q.onnx", method="int4")
    with pytest.raises(ConfigError, match=r"name it q\.onnx"):
        quantize_onnx(src, tmp_path / "q.int8")
    quantize_onnx(src, tmp_path / "q.onnx")
    with pytest.raises(ConfigError, match="already quantised"):
        quantize_onnx(tmp_path / "q.onnx", tmp_path / "qq.onnx")


def test_a_resnet_is_quantised_statically_not_dynamically(tmp_path):
    bit = vitlab.create_model("bit_r50x1", layers=(1, 1, 1, 1), stem_width=8, gn_groups=8,
                              stem_type="small", img_size=16, num_classes=3)  # fmt: skip
    export_onnx(perturb_(bit).eval(), tmp_path / "bit.onnx")
    with pytest.raises(ConfigError, match="no linear layers.*--calibrate"):
        quantize_onnx(tmp_path / "bit.onnx", tmp_path / "dyn.onnx")
    assert not (tmp_path / "dyn.onnx").exists()
    r = quantize_onnx(tmp_path / "bit.onnx", tmp_path / "st.onnx", method="static",
                      calibration=_calibration(size=16))  # fmt: skip
    assert r.int8_ops["QuantizeLinear"] > 0 and "Conv" in r.description
