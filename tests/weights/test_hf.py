"""Parity with Hugging Face transformers' own ViT: random weights, fp32, logits within 1e-4."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError
from vitlab.preprocess import eval_transform, preprocess_of

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


@pytest.mark.parametrize("processor", ["BitImageProcessor", "BitImageProcessorPil"])
def test_exported_preprocessor_matches_eval_transform(tmp_path, processor):
    """transformers' processor of an exported model resizes the short side, centre-crops and
    resamples (bicubic, not its bilinear default) as vitlab's eval transform does, on a
    non-square image: the same pixels up to one uint8 level (2/255 after normalising to
    [-1, 1]) where the PIL backend rounds the resized image."""
    cls = getattr(transformers, processor, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {processor}")
    model = vitlab.create_model("vit_test", num_classes=4, crop_pct=0.875)
    out = vitlab.save_checkpoint(model, tmp_path / "exported", format="hf")
    proc = cls.from_pretrained(out)
    assert proc.resample == Image.Resampling.BICUBIC
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (60, 91, 3), dtype=np.uint8))
    theirs = proc(images=img, return_tensors="pt")["pixel_values"][0]
    ours = eval_transform(model.data_config)(img)
    assert theirs.shape == ours.shape == (3, 32, 32)
    assert (theirs - ours).abs().max().item() <= 2 / 255 + 1e-6


def _chelsea(tmp_path):
    """skimage's 300x451 photo of a cat, saved losslessly."""
    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "chelsea.png")
    return tmp_path / "chelsea.png"


def _top5_agree(theirs: list[tuple[str, float]], ours: list[tuple[int, str, float]]) -> None:
    assert [label for label, _ in theirs] == [label for _, label, _ in ours]
    assert max(abs(p - q) for (_, p), (_, _, q) in zip(theirs, ours)) <= 1e-3


def _export_with_crop(tmp_path, **kw):
    names = tuple(f"class {i}" for i in range(10))
    torch.manual_seed(0)
    model = vitlab.create_model("vit_test", num_classes=10, class_names=names, crop_pct=0.875, **kw)
    perturb_(model, 0.5).eval()  # confident enough that squashing the photo shows
    return model, vitlab.save_checkpoint(model, tmp_path / "exported", format="hf")


def test_pipeline_on_an_export_agrees_with_vitlab_predict(tmp_path):
    """`transformers.pipeline` on the export classifies a non-square photo as `vitlab predict`
    does (a ViTImageProcessor, which squashed it, was 0.07-0.27 away)."""
    from vitlab.predict import predict_files

    model, out = _export_with_crop(tmp_path)
    photo = _chelsea(tmp_path)
    pipe = transformers.pipeline("image-classification", model=str(out), top_k=5)
    theirs = [(r["label"], r["score"]) for r in pipe(Image.open(photo))]
    ours = predict_files(model, [photo], progress=False).predictions[0].top
    _top5_agree(theirs, ours)


def test_greyscale_export_processor_agrees_with_vitlab_predict(tmp_path, caplog):
    """A 1-channel model's processor takes greyscale images (do_convert_rgb off); the export says
    that the pipeline, which converts to RGB, cannot run it."""
    from vitlab.predict import predict_files

    with caplog.at_level("WARNING", logger="vitlab"):
        model, out = _export_with_crop(tmp_path, in_chans=1, mean=(0.3,), std=(0.4,))
    assert "converts every image to RGB" in caplog.text
    photo = _chelsea(tmp_path)
    proc = transformers.AutoImageProcessor.from_pretrained(out)
    ref = transformers.ViTForImageClassification.from_pretrained(out).eval()
    x = proc(images=Image.open(photo).convert("L"), return_tensors="pt")["pixel_values"]
    probs = _hf_logits(ref, x)[0].softmax(-1)
    top = probs.topk(5)
    theirs = [(ref.config.id2label[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
    _top5_agree(theirs, predict_files(model, [photo], progress=False).predictions[0].top)


@pytest.mark.parametrize(("img_size", "crop_pct"), [(32, 1.0), (32, 0.875), (32, 0.95), (224, 0.9)])
def test_export_reads_back_its_preprocessing(tmp_path, img_size, crop_pct):
    """Loading an export back gives the same preprocessing: its crop_pct may differ (32 / 0.875
    resizes to 36, read back as 32 / 36), the short side it resizes to does not."""
    model = vitlab.create_model("vit_test", img_size=img_size, crop_pct=crop_pct, mean=(0.1,) * 3)
    out = vitlab.save_checkpoint(model, tmp_path / "exported", format="hf")
    back, want = preprocess_of(vitlab.load_checkpoint(out)), preprocess_of(model)
    assert back.resize_size == want.resize_size
    assert dataclasses.replace(back, crop_pct=want.crop_pct) == want


def test_a_vit_image_processor_still_loads(tmp_path):
    """Directories with transformers' ViTImageProcessor (Google's uploads) keep loading: its
    mean and std, and no crop."""
    ref = transformers.ViTForImageClassification(_hf_config())
    ref.save_pretrained(tmp_path / "hf")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    transformers.ViTImageProcessor(image_mean=mean, image_std=std).save_pretrained(tmp_path / "hf")
    cfg = vitlab.load_checkpoint(tmp_path / "hf").cfg
    assert (list(cfg.mean), list(cfg.std), cfg.crop_pct) == (mean, std, 1.0)


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
