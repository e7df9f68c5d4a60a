"""Parity with Hugging Face transformers' own ViT: random weights, fp32, logits within 1e-4."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError
from vitlab.preprocess import eval_transform

transformers = pytest.importorskip("transformers")


def _hf_config(**kw):
    base = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        num_labels=5,
        layer_norm_eps=1e-6,
    )
    return transformers.ViTConfig(**{**base, **kw})


def _close(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


def _hf_logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize(
    "kw",
    [
        {},  # small config
        {"layer_norm_eps": 1e-12},  # transformers' default eps
        {"hidden_act": "gelu_pytorch_tanh", "qkv_bias": False, "num_channels": 1},
    ],
)
def test_hf_save_pretrained_loads_with_same_logits(tmp_path, kw):
    cfg = _hf_config(**kw, id2label={i: f"class{i}" for i in range(5)})
    ref = perturb_(transformers.ViTForImageClassification(cfg)).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours = vitlab.load_checkpoint(tmp_path / "hf")  # detected from config.json
    assert ours.cfg.extra["source"] == "hf"
    assert ours.cfg.layer_norm_eps == cfg.layer_norm_eps
    assert ours.cfg.class_names == tuple(f"class{i}" for i in range(5))
    x = torch.randn(2, cfg.num_channels, 32, 32)
    with torch.no_grad():
        _close(ours(x), _hf_logits(ref, x))


def test_hf_state_dict_with_module_names(tmp_path):
    """transformers>=5 names modules q_proj/o_proj/mlp.fc1 in memory; those load too."""
    ref = perturb_(transformers.ViTForImageClassification(_hf_config())).eval()
    (tmp_path / "d").mkdir()
    torch.save(ref.state_dict(), tmp_path / "d" / "pytorch_model.bin")
    (tmp_path / "d" / "config.json").write_text(json.dumps(ref.config.to_dict()))
    ours = vitlab.load_checkpoint(tmp_path / "d")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(ours(x), _hf_logits(ref, x))


@pytest.mark.parametrize("eps", [1e-6, 1e-12])
def test_export_to_hf_loads_in_transformers(tmp_path, eps):
    ours = perturb_(
        vitlab.create_model(
            "vit_test", num_classes=4, layer_norm_eps=eps, class_names=("a", "b", "c", "d")
        )
    ).eval()
    out = vitlab.save_checkpoint(ours, tmp_path / "exported", format="hf")
    ref = transformers.ViTForImageClassification.from_pretrained(out).eval()
    assert ref.config.id2label[2] == "c" and ref.config.layer_norm_eps == eps
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(ours(x), _hf_logits(ref, x))
    back = vitlab.load_checkpoint(out)
    with torch.no_grad():
        _close(back(x), ours(x))


@pytest.mark.parametrize("processor", ["ViTImageProcessor", "ViTImageProcessorPil"])
def test_exported_preprocessor_matches_eval_transform(tmp_path, processor):
    """transformers' processor of an exported model resizes as vitlab's eval transform does
    (bicubic, not its bilinear default): the same pixels up to one uint8 level (2/255 after
    normalising to [-1, 1]) where the PIL backend rounds the resized image. A square image: for
    others ViTImageProcessor squashes to img_size x img_size where vitlab resizes and crops."""
    cls = getattr(transformers, processor, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {processor}")
    model = vitlab.create_model("vit_test", num_classes=4)
    out = vitlab.save_checkpoint(model, tmp_path / "exported", format="hf")
    proc = cls.from_pretrained(out)
    assert proc.resample == Image.Resampling.BICUBIC
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8))
    theirs = proc(images=img, return_tensors="pt")["pixel_values"][0]
    ours = eval_transform(model.data_config)(img)
    assert theirs.shape == ours.shape == (3, 32, 32)
    assert (theirs - ours).abs().max().item() <= 2 / 255 + 1e-6


def test_vitmodel_pooler_is_pre_logits(tmp_path):
    ref = perturb_(transformers.ViTModel(_hf_config())).eval()
    ref.save_pretrained(tmp_path / "m")
    ours = vitlab.load_checkpoint(tmp_path / "m")
    assert ours.cfg.representation_size == 64 and ours.cfg.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(ours(x), ref(pixel_values=x).pooler_output)
    out = vitlab.save_checkpoint(ours, tmp_path / "back", format="hf")
    again = transformers.ViTModel.from_pretrained(out).eval()
    with torch.no_grad():
        _close(again(pixel_values=x).pooler_output, ref(pixel_values=x).pooler_output)


def test_unexportable_model_is_a_clear_error(tmp_path):
    model = vitlab.create_model("vit_test", pool="gap")
    with pytest.raises(CheckpointError, match="class token"):
        vitlab.save_checkpoint(model, tmp_path / "x", format="hf")


def test_extra_tensor_is_reported(tmp_path):
    ref = transformers.ViTForImageClassification(_hf_config())
    ref.save_pretrained(tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "hf" / "model.safetensors")
    sd["vit.encoder.layer.0.attention.attention.rel_pos"] = torch.zeros(3)
    save_file(sd, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(CheckpointError, match="rel_pos"):
        vitlab.load_checkpoint(tmp_path / "hf")
