"""DeiT's layouts (issue #25): timm's `deit_*_distilled_patch16_224` state dicts and
transformers' `DeiTForImageClassificationWithTeacher` / `DeiTModel` directories load with the
outputs of those libraries' own models (random weights, fp32, within 1e-4) and export back to
both; plain DeiT checkpoints are ViTs and load as such."""

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError
from vitlab.weights.timm import timm_twin

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)  # timm's names


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


def _save(ref, path):
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "deit_tiny_patch16_224"])
def test_timm_deit_loads_with_timms_outputs(tmp_path, name):
    ref = perturb_(timm.create_model(name, pretrained=False, num_classes=5, **TINY)).eval()
    ours = vitlab.load_checkpoint(_save(ref, tmp_path / "deit.safetensors"), num_heads=3).eval()
    assert ours.cfg.distill_token == ("distilled" in name)
    x = _x()
    with torch.no_grad():
        _close(ours(x), ref(x))  # eval: timm averages the two heads as well
        _close(timm_twin(ours).eval()(x), ref(x))


def test_timm_deit_exports_back(tmp_path):
    ref = perturb_(timm.create_model("deit_tiny_distilled_patch16_224", num_classes=5, **TINY))
    ours = vitlab.load_checkpoint(_save(ref, tmp_path / "a.safetensors"), num_heads=3).eval()
    out = vitlab.save_checkpoint(ours, tmp_path / "b.safetensors", format="timm")
    back = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=5, **TINY)
    back.load_state_dict(vitlab.weights.io.read_raw(out).tensors, strict=True)
    x = _x()
    with torch.no_grad():
        _close(back.eval()(x), ref.eval()(x))


def _hf_config(num_labels=5):
    return transformers.DeiTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=96, num_labels=num_labels,
    )  # fmt: skip


def test_hf_deit_with_teacher_loads_and_exports_with_parity(tmp_path):
    ref = perturb_(transformers.DeiTForImageClassificationWithTeacher(_hf_config()), 0.2).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours = vitlab.load_checkpoint(tmp_path / "hf").eval()
    assert ours.cfg.distill_token and ours.cfg.layer_norm_eps == 1e-12
    x = _x()
    with torch.no_grad():
        out = ref(pixel_values=x)
        mine = ours.forward_intermediates(x)
        _close(mine["logits_cls"], out.cls_logits)
        _close(mine["logits_dist"], out.distillation_logits)
        _close(ours(x), out.logits)
    vitlab.save_checkpoint(ours, tmp_path / "back", format="hf")
    back = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "back")
    with torch.no_grad():
        _close(back.eval()(pixel_values=x).logits, out.logits)


def test_hf_deit_model_loads_as_a_headless_encoder(tmp_path):
    ref = perturb_(transformers.DeiTModel(_hf_config(), add_pooling_layer=False), 0.2).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours = vitlab.load_checkpoint(tmp_path / "hf").eval()
    assert ours.cfg.num_classes == 0 and ours.cfg.num_prefix_tokens == 2
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), ref(pixel_values=x).last_hidden_state)


def test_hf_deit_single_head_classifier_is_refused(tmp_path):
    transformers.DeiTForImageClassification(_hf_config()).save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="DeiTForImageClassificationWithTeacher"):
        vitlab.load_checkpoint(tmp_path / "hf")


@pytest.mark.parametrize(("fmt", "name"), [("google", "out.npz"), ("torchvision", "out.pth")])
def test_layouts_without_a_distillation_token_refuse_it(tmp_path, fmt, name):
    m = vitlab.create_model("vit_test", distill_token=True, img_size=16, patch_size=4)
    with pytest.raises(CheckpointError, match="distillation token"):
        vitlab.save_checkpoint(m, tmp_path / name, format=fmt)


def test_distilled_model_round_trips_natively_and_through_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = perturb_(vitlab.create_model("vit_test", distill_token=True, img_size=16, patch_size=4))
    m.eval()
    x = torch.randn(2, 3, 16, 16)
    back = vitlab.load_checkpoint(vitlab.save_checkpoint(m, tmp_path / "m.safetensors")).eval()
    assert back.cfg.distill_token
    with torch.no_grad():
        _close(back(x), m(x))
    vitlab.save_checkpoint(m, tmp_path / "m.onnx", format="onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        _close(torch.from_numpy(out), m(x))
