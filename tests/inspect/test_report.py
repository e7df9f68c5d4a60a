import numpy as np
import pytest
from PIL import Image

import vitlab
from tests.conftest import perturb_
from vitlab.inspect import InspectError
from vitlab.inspect.report import inspect_model


def _photos(n=2, mode="RGB"):
    rng = np.random.default_rng(0)
    return [
        (
            f"photo {i}.png",
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), np.uint8)).convert(mode),
        )
        for i in range(n)
    ]


def _check_written(report):
    html = report.index.read_text()
    for name, caption in report.figures:
        with Image.open(report.out_dir / name) as img:
            assert img.format == "PNG" and img.width > 100
        assert f"src='{name}'" in html and caption in html
    assert not list(report.out_dir.glob("*.tmp"))
    return html


def test_token_model_writes_every_figure(tmp_path):
    model = perturb_(vitlab.create_model("vit_test"), 0.3)
    report = inspect_model(model, _photos(), tmp_path / "out", block=0, heads=[1], progress=False)
    names = [n for n, _ in report.figures]
    assert names[:3] == ["filters.png", "position_similarity.png", "attention_distance.png"]
    assert {"rollout_00_photo_0.png", "heads_block0_01_photo_1.png"} <= set(names)
    assert len(names) == 3 + 2 * 2
    html = _check_written(report)
    assert "Figure 6" in html and "Figure 7 (right)" in html and "class token" in html


def test_distilled_model_shows_both_tokens(tmp_path):
    model = perturb_(vitlab.create_model("vit_test", distill_token=True), 0.3)
    report = inspect_model(model, _photos(2), tmp_path, block=1, progress=False)
    names = [n for n, _ in report.figures]
    assert {"rollout_dist_00_photo_0.png", "heads_dist_block1_01_photo_1.png"} <= set(names)
    assert len(names) == 3 + 2 * 4  # rollout and heads, from each token, per image
    html = _check_written(report)
    assert "distillation token" in html and "class head:" in html
    (note,) = [n for n in report.notes if "distillation token" in n]
    cosine = float(note.split("LayerNorm is ")[1].split(" ")[0])
    assert -1 <= cosine < 1  # random tokens are not the same token


def test_gap_sincos_gray_model_says_so(tmp_path):
    model = vitlab.create_model("vit_test", pool="gap", pos_embed="sincos", in_chans=1)
    report = inspect_model(model, _photos(1, "L"), tmp_path, progress=False)
    html = _check_written(report)
    assert "sin-cos" in html and "mean over the patch tokens" in html
    assert len(report.notes) == 2


def test_hybrid_skips_filters_and_says_why(tmp_path):
    stem = vitlab.ResNetConfig(
        layers=(1, 1), stem_width=8, gn_groups=4, preact=False, stem_type="same", num_classes=0
    )
    model = vitlab.create_model(
        "vit_test", img_size=64, patch_size=1, backbone=stem, depth=1, num_heads=2
    )
    report = inspect_model(model, _photos(1), tmp_path, progress=False)
    html = _check_written(report)
    assert "filters.png" not in html and "CNN stem" in html
    assert model.cfg.grid_size() == (8, 8)


def test_bad_block_and_head_are_clear_errors(tmp_path):
    model = vitlab.create_model("vit_test")
    with pytest.raises(InspectError, match=r"blocks 0\.\.1"):
        inspect_model(model, _photos(1), tmp_path, block=5, progress=False)
    with pytest.raises(InspectError, match="heads"):
        inspect_model(model, _photos(1), tmp_path, heads=[7], progress=False)
    with pytest.raises(InspectError, match="no images"):
        inspect_model(model, [], tmp_path, progress=False)
