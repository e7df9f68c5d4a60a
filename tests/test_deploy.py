"""int8 deployment on real data: a ViT and a hybrid trained briefly on scikit-learn's digits,
exported and quantised (dynamic, and static calibrated on training images), must keep their
fp32 top-1 on the digits test split; `predict` and `eval` on the .onnx files give the classes
the checkpoints give."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitlab
from vitlab.data.datasets import load_data
from vitlab.data.transforms import normalize
from vitlab.deploy import calibration_batches, export_for_deployment
from vitlab.errors import ConfigError
from vitlab.evaluate import evaluate_checkpoint
from vitlab.predict import predict_files
from vitlab.weights.onnx import OnnxModel, export_onnx
from vitlab.weights.quantize import quantize_onnx

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

DIGITS = tuple(str(i) for i in range(10))


def _train(model: torch.nn.Module, steps: int = 150) -> torch.nn.Module:
    """A few epochs of Adam on digits: enough for ~90% test top-1."""
    data = load_data("digits")
    x = normalize(data.train.images, model.cfg.mean, model.cfg.std)
    y = data.train.labels
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


DIGIT_MODEL = {"img_size": 8, "in_chans": 1, "mean": (0.5,), "std": (0.5,), "class_names": DIGITS}
MODELS = {
    "vit": lambda: vitlab.create_model("vit_test", patch_size=2, **DIGIT_MODEL),
    "hybrid": lambda: vitlab.create_model("r11_vit_micro", depth=2, **DIGIT_MODEL),
}


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request, tmp_path_factory):
    torch.manual_seed(0)
    model = _train(MODELS[request.param]())
    folder = tmp_path_factory.mktemp(request.param)
    vitlab.save_checkpoint(model, folder / "m.safetensors")
    export_onnx(model, folder / "fp32.onnx")
    return model, folder


def _test_logits(model) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_data("digits")
    x = normalize(data.test.images, model.cfg.mean, model.cfg.std)
    with torch.inference_mode():
        return model(x), data.test.labels


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_keeps_the_top1_of_fp32(trained, method):
    model, folder = trained
    calibration = calibration_batches(model, "digits", 128) if method == "static" else None
    report = quantize_onnx(
        folder / "fp32.onnx", folder / f"{method}.onnx", method=method, calibration=calibration
    )
    int8 = vitlab.load_checkpoint(folder / f"{method}.onnx")
    assert int8.quantization == report.description and "int8" in report.description
    assert report.int8_ops and report.megabytes < (folder / "fp32.onnx").stat().st_size / 1e6
    fp32_logits, y = _test_logits(model)
    int8_logits, _ = _test_logits(int8)
    fp32_top1 = (fp32_logits.argmax(1) == y).float().mean().item()
    int8_top1 = (int8_logits.argmax(1) == y).float().mean().item()
    agree = (int8_logits.argmax(1) == fp32_logits.argmax(1)).float().mean().item()
    assert fp32_top1 > 0.8  # the model learned something, so agreement means something
    assert agree >= 0.97 and int8_top1 >= fp32_top1 - 0.02, (fp32_top1, int8_top1, agree)


def test_calibration_images_are_balanced_training_images_preprocessed():
    model = MODELS["vit"]()
    batches = calibration_batches(model, "digits", 100, batch_size=32)
    assert [len(b) for b in batches] == [32, 32, 32, 4]  # batch_size as asked
    x = np.concatenate(batches)
    assert x.shape == (100, 1, 8, 8) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0  # mean 0.5, std 0.5 on [0, 1]
    with pytest.raises(ConfigError, match="at least one image"):
        calibration_batches(model, "digits", 0)


def test_export_for_deployment(trained, tmp_path):
    model, _ = trained
    r = export_for_deployment(model, tmp_path / "q.onnx", quantize="int8", calibrate="digits",
                              calibration_images=64)  # fmt: skip
    assert r.quantize.method == "static" and r.quantize.calibration_images == 64
    assert r.agreement is not None and r.agreement >= 0.95
    assert "64 images of digits" in OnnxModel(tmp_path / "q.onnx").quantization
    with pytest.raises(ConfigError, match="add --quantize int8"):
        export_for_deployment(model, tmp_path / "x.onnx", calibrate="digits")


def test_predict_and_eval_on_onnx_give_the_checkpoints_classes(trained, tmp_path):
    _, folder = trained
    data = load_data("digits")
    files = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray(data.test.images[i, 0].numpy()).save(path)
        files.append(path)
    ckpt = vitlab.load_checkpoint(folder / "m.safetensors")
    onnx_model = vitlab.load_checkpoint(folder / "fp32.onnx")
    a = predict_files(ckpt, files, topk=3, progress=False)
    b = predict_files(onnx_model, files, topk=3, progress=False)
    assert [[c for c, *_ in p.top] for p in a.predictions] == [
        [c for c, *_ in p.top] for p in b.predictions
    ]
    for p, q in zip(a.predictions, b.predictions):
        assert [lab for _, lab, _ in p.top] == [lab for _, lab, _ in q.top]  # class names too
        np.testing.assert_allclose([s for *_, s in p.top], [s for *_, s in q.top], atol=1e-5)
    ra = evaluate_checkpoint(ckpt, "digits")
    rb = evaluate_checkpoint(onnx_model, "digits")
    assert ra["top1"] == rb["top1"] and ra["confusion"] == rb["confusion"]
