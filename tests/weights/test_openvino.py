"""OpenVINO IR (vitlab.weights.openvino): the round trip keeps vitlab's metadata, OpenVINO's
fp32 logits match PyTorch's, bf16 and NNCF int8 agree with fp32 on real images, and a file
vitlab cannot run is one line saying why. Every comparison is with the PyTorch model the IR came
from, run here."""

import json

import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError, ConfigError
from vitlab.runtime.precision import in_precision

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from vitlab.weights.openvino import OpenVinoModel, export_openvino

NAMES = ("cat", "dog", "bird", "fish")


@pytest.mark.parametrize(
    "build",
    [
        lambda: vitlab.create_model("vit_test", num_classes=4, class_names=NAMES),
        lambda: vitlab.create_model(
            "bit_r50x1",
            layers=[1, 1, 1, 1],
            stem_width=8,
            gn_groups=4,
            img_size=32,
            num_classes=4,
            class_names=NAMES,
        ),
    ],
    ids=["vit", "resnet"],
)
def test_the_ir_round_trip_keeps_the_metadata_and_the_fp32_logits(tmp_path, build):
    model = perturb_(build(), 0.05).eval()
    r = export_openvino(model, tmp_path / "m.xml")
    assert r.path.is_file() and (tmp_path / "m.bin").is_file()
    assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-4
    ov = vitlab.load_checkpoint(tmp_path / "m.xml")
    assert isinstance(ov, OpenVinoModel)
    assert ov.cfg.to_dict() | {"extra": {}} == model.cfg.to_dict() | {"extra": {}}
    assert ov.cfg.class_names == NAMES and ov.num_params() == model.num_params()
    assert ov.quantization == "none" and ov.data_config == model.data_config
    recipe = json.loads(ov.metadata["preprocessing"])  # what a deployment without vitlab reads
    assert recipe == vitlab.preprocess.preprocess_of(model).recipe()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(x)
    assert float((ov(x) - want).abs().max()) <= 1e-4
    bf16 = in_precision(ov, "bf16")
    assert bf16.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    assert ov.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    got = bf16(x)
    assert 0 < float((got - want).abs().max()) <= 0.02 * float(want.max() - want.min())


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    from vitlab.train.config import TrainConfig
    from vitlab.train.run import fit

    out = tmp_path_factory.mktemp("digits") / "run"
    cfg = TrainConfig(model="vit_test", model_args={"patch_size": 4}, img_size=8, data="digits",
                      epochs=8, batch_size=64, lr=3e-3, warmup_steps=5, out=str(out))  # fmt: skip
    fit(cfg)
    return vitlab.load_checkpoint(out / "last.safetensors")


def test_nncf_int8_agrees_with_fp32_on_digits(tmp_path, digits_model):
    from vitlab.deploy import export_for_deployment
    from vitlab.evaluate import evaluate_checkpoint

    r = export_for_deployment(digits_model, tmp_path / "q.xml", quantize="int8",
                              calibrate="digits", calibration_images=128)  # fmt: skip
    assert r.openvino.agreement >= 0.95 and r.openvino.calibration_images == 128
    q = vitlab.load_checkpoint(tmp_path / "q.xml")
    assert q.quantization.startswith("int8 NNCF") and "128 images of digits" in q.quantization
    fp32 = evaluate_checkpoint(digits_model, "digits")
    int8 = evaluate_checkpoint(q, "digits")
    assert fp32["top1"] > 0.6
    assert abs(int8["top1"] - fp32["top1"]) <= 0.03  # on the 360 test images
    ops = {op.get_type_name() for op in q.ir.get_ops()}
    assert "FakeQuantize" in ops  # NNCF's int8 quantise-dequantise pairs are in the graph


def test_int8_without_calibration_images_is_refused(tmp_path, digits_model):
    from vitlab.deploy import export_for_deployment

    with pytest.raises(ConfigError, match="OpenVINO int8 calibrates .* add --calibrate DATA"):
        export_for_deployment(digits_model, tmp_path / "q.xml", quantize="int8")
    assert not (tmp_path / "q.xml").exists()


def test_files_vitlab_cannot_run_are_one_line_errors(tmp_path):
    model = perturb_(vitlab.create_model("vit_test", num_classes=4)).eval()
    export_openvino(model, tmp_path / "m.xml")
    with pytest.raises(ConfigError, match="img_size cannot be changed"):
        vitlab.load_checkpoint(tmp_path / "m.xml", img_size=64)
    (tmp_path / "m.bin").rename(tmp_path / "elsewhere.bin")
    with pytest.raises(CheckpointError, match="keeps its weights in m.bin beside it"):
        vitlab.load_checkpoint(tmp_path / "m.xml")
    (tmp_path / "junk.xml").write_text("<net></net>")
    (tmp_path / "junk.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="junk.xml is not a readable OpenVINO IR"):
        vitlab.load_checkpoint(tmp_path / "junk.xml")
    with pytest.raises(ConfigError, match="name it m.xml"):
        export_openvino(model, tmp_path / "m.ir")
    ov_dir = tmp_path / "plain"
    ov_dir.mkdir()
    import openvino as ov

    ov.save_model(ov.convert_model(str(_onnx(model, tmp_path))), str(ov_dir / "p.xml"))
    with pytest.raises(CheckpointError, match="an OpenVINO IR vitlab did not write"):
        vitlab.load_checkpoint(ov_dir / "p.xml")


def _onnx(model, tmp_path):
    from vitlab.weights.onnx import export_onnx

    return export_onnx(model, tmp_path / "plain.onnx").path
