"""`patch_init: whiten` and `freeze_patch_embed`: the patch embedding's outputs on the sample are
decorrelated with unit variance (their covariance, computed here from the convolution's own
outputs, is the identity), the run starts from exactly that embedding, and a frozen one does
not move while the rest trains."""

import pytest
import torch
import torch.nn.functional as F

from tests.train.common import SMALL, small_cfg
from vitlab.data.datasets import load_data
from vitlab.data.sets import ArraySet, DataSplits
from vitlab.errors import ConfigError
from vitlab.evaluate import eval_augmentation
from vitlab.models.registry import create_model
from vitlab.train.config import TrainConfig
from vitlab.train.run import fit, model_for_data
from vitlab.train.whiten import sample_images, whiten_patch_embed


def smooth_images(n: int, channels: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 images with strongly correlated neighbouring pixels (upsampled coarse noise plus a
    little pixel noise), as natural images have: patches far from white."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, size // 4, size // 4, generator=g)
    x = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(n, channels, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def embedding_outputs(model, images: torch.Tensor) -> torch.Tensor:
    """(N·L, D) float64: the patch embedding's output for every patch of `images`, through the
    model's own normalisation and convolution."""
    mean = torch.tensor(model.cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(model.cfg.std).view(1, -1, 1, 1)
    with torch.no_grad():
        out = model.patch_embed((images.float() / 255 - mean) / std)  # (N, gh, gw, D)
    return out.reshape(-1, out.shape[-1]).double()


def covariance(z: torch.Tensor) -> torch.Tensor:
    zc = z - z.mean(0)
    return zc.T @ zc / len(z)


@pytest.mark.parametrize("channels", [1, 3])
def test_whitened_patch_embedding_outputs_are_decorrelated_with_unit_variance(channels):
    # 1 channel: k = 16 < D = 32 (the other 16 channels keep their random start);
    # 3 channels: k = 48 > D = 32 (the 32 strongest directions)
    model = create_model("vit_test", **SMALL, in_chans=channels)
    before = model.patch_embed.proj.weight.detach().clone()
    images = smooth_images(512, channels)
    raw = covariance(embedding_outputs(model, images))
    m = whiten_patch_embed(model, images, eps=1e-8)
    k = channels * 16
    assert m == min(32, k)
    z = embedding_outputs(model, images)[:, :m]
    assert z.mean(0).abs().max() < 1e-4
    torch.testing.assert_close(covariance(z), torch.eye(m, dtype=torch.float64), atol=2e-4, rtol=0)
    raw_corr = raw / raw.diagonal().sqrt().outer(raw.diagonal().sqrt())
    assert (raw_corr - torch.eye(32, dtype=torch.float64)).abs().max() > 0.3  # it was not white
    w = model.patch_embed.proj.weight.detach()
    torch.testing.assert_close(w[m:], before[m:], rtol=0, atol=0)
    # the kept directions are the strongest: the span of the top right singular vectors of the
    # centred patches (cut out here by reshaping, not by unfold)
    mean = torch.tensor(model.cfg.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(model.cfg.std, dtype=torch.float64).view(1, -1, 1, 1)
    x = (images.double() / 255 - mean) / std
    n = len(x)
    p = x.reshape(n, channels, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(-1, k)
    top = torch.linalg.svd(p - p.mean(0), full_matrices=False).Vh[:m]  # (m, k)
    rows = w[:m].reshape(m, k).double()
    rows = rows / rows.norm(dim=1, keepdim=True)
    assert (rows - rows @ top.T @ top).norm(dim=1).max() < 1e-3


def test_eps_damps_the_weakest_directions_instead_of_amplifying_them():
    model = create_model("vit_test", **SMALL, in_chans=1)
    images = smooth_images(512, 1)
    whiten_patch_embed(model, images)  # the default eps
    var = covariance(embedding_outputs(model, images)[:, :16]).diagonal()
    assert var[0] > 0.99  # the strongest direction: unit variance
    assert var[-1] < var[0]  # the weakest, well below its variance's inverse square root
    assert (var <= 1 + 1e-6).all()


def _smooth_data(channels: int = 3) -> DataSplits:
    train = ArraySet(smooth_images(256, channels), torch.arange(256) % 4)
    test = ArraySet(smooth_images(64, channels, seed=1), torch.arange(64) % 4)
    return DataSplits("smooth", train, None, test, tuple("abcd"), channels, 16)


def test_a_run_with_patch_init_whiten_starts_from_the_whitened_sample():
    data = _smooth_data()
    cfg = TrainConfig(model="vit_test", model_args=SMALL, data="synthetic", patch_init="whiten",
                      patch_init_images=100, seed=3)  # fmt: skip
    model = model_for_data(cfg, data)
    by_hand = model_for_data(TrainConfig(model="vit_test", model_args=SMALL, seed=3), data)
    default = by_hand.patch_embed.proj.weight.detach().clone()
    x = sample_images(data.train, 100, eval_augmentation(by_hand), seed=3)
    assert len(x) == 100
    whiten_patch_embed(by_hand, x)
    for name in ("weight", "bias"):
        got = getattr(model.patch_embed.proj, name)
        torch.testing.assert_close(got, getattr(by_hand.patch_embed.proj, name))
    assert not torch.allclose(model.patch_embed.proj.weight, default)
    other = dict(model.named_parameters())
    for name, p in by_hand.named_parameters():  # nothing else differs from the default start
        if not name.startswith("patch_embed"):
            torch.testing.assert_close(other[name], p, rtol=0, atol=0)


@pytest.mark.parametrize("patch_init", ["default", "whiten"])
def test_a_frozen_patch_embedding_stays_at_its_start_while_the_rest_trains(tmp_path, patch_init):
    cfg = small_cfg(tmp_path, patch_init=patch_init, freeze_patch_embed=True, epochs=1)
    start = model_for_data(cfg, load_data("synthetic"))
    trained = fit(cfg).state.eval_model
    for name, p in trained.named_parameters():
        before = dict(start.named_parameters())[name]
        if name.startswith("patch_embed"):
            torch.testing.assert_close(p, before, rtol=0, atol=0)
        elif name.startswith("blocks.0.attn.qkv.weight"):
            assert not torch.allclose(p, before)


def test_patch_init_whiten_without_a_pixel_patch_embedding_or_with_loaded_weights_is_refused(
    tmp_path,
):
    data = load_data("synthetic")
    resnet = dict(model="bit_r50x1", model_args={"layers": [1, 1, 1, 1], "stem_width": 8,
                  "gn_groups": 4}, img_size=16)  # fmt: skip
    with pytest.raises(ConfigError, match="patch_init=whiten is about a ViT's pixel patch"):
        model_for_data(TrainConfig(**resnet, patch_init="whiten"), data)
    with pytest.raises(ConfigError, match="freeze_patch_embed is about a ViT's pixel patch"):
        model_for_data(TrainConfig(**resnet, freeze_patch_embed=True), data)
    hybrid = dict(model="r11_vit_micro", img_size=28)
    with pytest.raises(ConfigError, match="a hybrid's patch embedding reads CNN features"):
        model_for_data(TrainConfig(**hybrid, patch_init="whiten"), data)
    with pytest.raises(ConfigError, match="init_from loads a trained one: drop one of them"):
        TrainConfig(init_from=str(tmp_path / "m.safetensors"), patch_init="whiten")


def test_watch_test_records_the_test_split_beside_validation_and_the_step_seconds(tmp_path):
    cfg = small_cfg(tmp_path, data="digits", img_size=8, model_args={"patch_size": 4},
                    val_split=0.1, watch_test=True, epochs=2)  # fmt: skip
    history = fit(cfg).state.history
    assert all("val_acc" in h and "test_acc" in h for h in history)
    assert 0 < history[0]["train_s"] < history[1]["train_s"]
    plain = fit(
        small_cfg(
            tmp_path,
            data="digits",
            img_size=8,
            model_args={"patch_size": 4},
            val_split=0.1,
            epochs=1,
            out=str(tmp_path / "plain"),
        )
    ).state.history
    assert "test_acc" not in plain[0]
