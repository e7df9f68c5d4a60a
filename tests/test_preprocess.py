"""The one definition of evaluation preprocessing (`vitlab.preprocess`), checked against an
independent PIL + numpy computation of the rule it documents, and its readers against it."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import vitlab
from vitlab.preprocess import (
    Preprocess,
    crop_pct_for,
    eval_transform,
    label_of,
    prepare_image,
    preprocess_of,
)


def _pil_reference(img: Image.Image, size: int, crop_pct: float, resample: str, mean, std):
    """The README's rule written out with PIL alone: short side to int(size / crop_pct), long
    side rounded down, centre crop with offsets rounded half to even, scale, normalise."""
    short = int(size / crop_pct)
    w, h = img.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize(new, getattr(Image.Resampling, resample))
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, np.float32).reshape(size, size, -1) / 255.0  # (H, W, C)
    return ((x - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)  # (C, H, W)


@pytest.mark.parametrize(
    ("hw", "crop_pct", "interpolation", "mode"),
    [
        ((300, 451), 0.875, "bicubic", "RGB"),  # skimage's chelsea: wide
        ((451, 300), 0.9, "bilinear", "RGB"),  # tall, BiT's filter
        ((64, 70), 1.0, "bicubic", "RGB"),  # long side 35 -> offset 1.5, rounded to 2
        ((66, 64), 1.0, "bicubic", "L"),  # long side 33 -> offset 0.5, rounded to 0
        ((37, 53), 0.95, "bicubic", "L"),  # upsampling
    ],
)
def test_resize_rule_matches_an_independent_pil_computation(hw, crop_pct, interpolation, mode):
    chans = 1 if mode == "L" else 3
    mean, std = (0.485, 0.456, 0.406)[:chans], (0.229, 0.224, 0.225)[:chans]
    model = vitlab.create_model("vit_test", in_chans=chans, crop_pct=crop_pct, mean=mean, std=std)
    model.interpolation = interpolation
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (*hw, 3), np.uint8)).convert(mode)
    x, _ = prepare_image(model, img)
    want = _pil_reference(img, 32, crop_pct, interpolation.upper(), mean, std)
    assert x.shape == want.shape == (chans, 32, 32)
    # torchvision's uint8 resampling is PIL's, but rounds a few pixels one level the other way;
    # noise images make a one-pixel shift or another filter differ almost everywhere
    diff = np.abs(x.numpy() - want) * np.float32(std).reshape(-1, 1, 1) * 255  # uint8 levels
    assert diff.max() < 1 + 1e-3 and (diff > 1e-3).mean() < 0.01


def test_data_config_is_the_preprocess_fields():
    model = vitlab.create_model("vit_test", crop_pct=0.875)
    assert model.data_config == {
        "img_size": 32,
        "in_chans": 3,
        "mean": model.cfg.mean,
        "std": model.cfg.std,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
    }
    p = preprocess_of(model)
    assert p == Preprocess.from_dict(model.data_config) and p.resize_size == 36
    assert (p.mode, p.pil_resample) == ("RGB", "BICUBIC")


def test_recipe_states_every_step():
    p = Preprocess(224, in_chans=1, mean=(0.5,), std=(0.25,), crop_pct=0.875)
    r = p.recipe()
    assert r["color_mode"] == "L" and r["layout"] == "NCHW" and r["dtype"] == "float32"
    assert r["resize"] == {
        "shortest_edge": 256,
        "long_edge_rounding": "floor",
        "resample": "BICUBIC",
        "antialias": True,
    }
    assert r["center_crop"]["height"] == r["center_crop"]["width"] == 224
    assert (r["mean"], r["std"], r["rescale_factor"]) == ([0.5], [0.25], 1 / 255)


def test_label_of_names_or_numbers():
    model = vitlab.create_model("vit_test", num_classes=3, class_names=("a", "b", "c"))
    assert [label_of(model, i) for i in range(3)] == ["a", "b", "c"]
    assert label_of(vitlab.create_model("vit_test", num_classes=3), 2) == "2"


def test_eval_transform_keeps_its_behaviour():
    img = Image.new("RGB", (50, 40), (120, 60, 30))
    cfg = {"img_size": 32, "crop_pct": 0.875, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    ref = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(int(32 / 0.875), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(32),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    torch.testing.assert_close(eval_transform(cfg)(img), ref(img))


def test_prepare_image_undoes_normalisation():
    model = vitlab.create_model("vit_test")
    img = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    x, display = prepare_image(model, img)
    assert x.shape == (3, 32, 32) and display.shape == (32, 32, 3)
    np.testing.assert_allclose(x.numpy(), (200 / 255 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_allclose(display, 200 / 255, atol=1e-6)


@pytest.mark.parametrize("variant", ["vit_test", "bit_r50x1"])
def test_eval_on_image_files_preprocesses_as_predict_does(variant):
    """`vitlab eval` on image files (the dataset's per-file transform, then the batch's
    normalisation) gives the inputs `vitlab predict` gives, BiT's bilinear filter included."""
    from vitlab.data.transforms import normalize, sample_transform
    from vitlab.evaluate import eval_augmentation

    kw = {"layers": (1, 1, 1, 1), "stem_width": 8, "gn_groups": 8} if variant != "vit_test" else {}
    model = vitlab.create_model(variant, img_size=32, crop_pct=0.875, **kw)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 61, 3), np.uint8))
    files = sample_transform(eval_augmentation(model))(img)[None]  # (1, C, S, S) uint8
    got = normalize(files, model.cfg.mean, model.cfg.std)[0]
    torch.testing.assert_close(got, prepare_image(model, img)[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("img_size", [28, 32, 224, 384])
def test_crop_pct_for_inverts_the_resize_rule(img_size):
    for short in range(img_size, 2 * img_size):
        crop_pct = crop_pct_for(img_size, short)
        assert 0 < crop_pct <= 1 and Preprocess(img_size, crop_pct=crop_pct).resize_size == short
