import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist

import vitlab
from tests.conftest import perturb_
from tests.inspect.conftest import numpy_attention, numpy_rollout
from vitlab.inspect import (
    InspectError,
    attention_rollout,
    collect_attention,
    distillation_token_index,
    head_attention,
    mean_attention_distance,
    patch_distances,
    rollout_matrix,
)


def test_attention_matches_numpy_forward_and_rows_sum_to_one(tiny_model):
    x = torch.randn(3, 3, 32, 32)
    attn, out = collect_attention(tiny_model, x)
    ref = numpy_attention(tiny_model, x)
    assert len(attn) == tiny_model.cfg.depth == len(ref)
    for a, r in zip(attn, ref):
        assert a.shape == (3, 2, 17, 17)
        np.testing.assert_allclose(a.numpy(), r, atol=1e-5)
        np.testing.assert_allclose(a.sum(-1).numpy(), 1.0, atol=1e-5)
    assert out["grid"] == (4, 4)
    assert "blocks" not in out  # freed


@pytest.mark.parametrize("img", [32, 48])
def test_rows_sum_to_one_gap_model_any_resolution(img):
    model = vitlab.create_model("vit_test", pool="gap", dynamic_img_size=True).eval()
    attn, out = collect_attention(perturb_(model, 0.3), torch.randn(2, 3, img, img))
    n = (img // 8) ** 2  # no class token
    for a in attn:
        assert a.shape == (2, 2, n, n)
        np.testing.assert_allclose(a.sum(-1).numpy(), 1.0, atol=1e-5)
    assert out["grid"] == (img // 8, img // 8)


def test_rollout_equals_numpy_recomputation(tiny_model):
    x = torch.randn(2, 3, 32, 32)
    attn, out = collect_attention(tiny_model, x)
    ref = numpy_rollout(numpy_attention(tiny_model, x))
    np.testing.assert_allclose(rollout_matrix(attn).numpy(), ref, atol=1e-5)
    maps = attention_rollout(attn, out["grid"], num_prefix_tokens=1, pool="token")
    assert maps.shape == (2, 4, 4)
    np.testing.assert_allclose(maps, ref[:, 0, 1:].reshape(2, 4, 4), atol=1e-5)


def test_rollout_of_gap_model_is_mean_of_patch_rows():
    model = perturb_(vitlab.create_model("vit_test", pool="gap"), 0.3).eval()
    x = torch.randn(1, 3, 32, 32)
    attn, out = collect_attention(model, x)
    ref = numpy_rollout(numpy_attention(model, x))
    maps = attention_rollout(attn, out["grid"], num_prefix_tokens=0, pool="gap")
    np.testing.assert_allclose(maps, ref.mean(axis=1).reshape(1, 4, 4), atol=1e-5)
    with pytest.raises(InspectError, match="class token"):
        attention_rollout(attn, out["grid"], num_prefix_tokens=0, pool="token")


def test_rollout_of_identity_attention_keeps_tokens_apart():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    maps = attention_rollout([eye, eye, eye], (2, 2), num_prefix_tokens=1)
    np.testing.assert_array_equal(maps, np.zeros((1, 2, 2)))


def test_head_attention_selects_class_token_rows(tiny_model):
    attn, out = collect_attention(tiny_model, torch.randn(1, 3, 32, 32))
    maps = head_attention(attn[1], out["grid"], 1, "token", heads=[1])
    np.testing.assert_allclose(maps[0, 0], attn[1][0, 1, 0, 1:].reshape(4, 4).numpy())
    with pytest.raises(InspectError, match="heads 0..1"):
        head_attention(attn[1], out["grid"], 1, "token", heads=[2])


def test_distillation_token_row_is_read_apart_from_the_class_token():
    model = perturb_(vitlab.create_model("vit_test", distill_token=True), 0.3).eval()
    assert distillation_token_index(model.cfg) == 1
    assert distillation_token_index(vitlab.create_model("vit_test").cfg) is None
    x = torch.randn(2, 3, 32, 32)
    attn, out = collect_attention(model, x)
    ref_maps = numpy_attention(model, x)
    np.testing.assert_allclose(attn[0].numpy(), ref_maps[0], atol=1e-5)  # [cls, dist, patches]
    ref = numpy_rollout(ref_maps)
    grid = out["grid"]
    cls = attention_rollout(attn, grid, 2, "token")
    dist = attention_rollout(attn, grid, 2, "token", token=1)
    np.testing.assert_allclose(cls, ref[:, 0, 2:].reshape(2, 4, 4), atol=1e-5)
    np.testing.assert_allclose(dist, ref[:, 1, 2:].reshape(2, 4, 4), atol=1e-5)
    assert not np.allclose(cls, dist, atol=1e-4)  # two tokens, two pictures
    heads = head_attention(attn[1], grid, 2, "token", heads=[0], token=1)
    np.testing.assert_allclose(heads[0, 0], attn[1][0, 0, 1, 2:].reshape(4, 4).numpy())
    with pytest.raises(InspectError, match="2 prefix token"):
        attention_rollout(attn, grid, 2, "token", token=2)


def _centres(grid, px):
    return np.array([(i * px, j * px) for i in range(grid[0]) for j in range(grid[1])], float)


def test_patch_distances_match_scipy():
    np.testing.assert_allclose(
        patch_distances((3, 5), 16).numpy(), cdist(_centres((3, 5), 16), _centres((3, 5), 16))
    )


@pytest.mark.parametrize("prefix", [0, 1])
def test_mean_distance_zero_for_identity_attention(prefix):
    n = 3 * 5 + prefix
    attn = torch.eye(n).expand(2, 4, n, n)
    np.testing.assert_allclose(mean_attention_distance(attn, (3, 5), 16, prefix), np.zeros(4))


@pytest.mark.parametrize("prefix", [0, 1])
def test_mean_distance_of_uniform_attention_is_mean_pairwise_distance(prefix):
    grid, px = (3, 5), 16
    n = grid[0] * grid[1]
    attn = torch.full((1, 3, n + prefix, n + prefix), 1.0 / (n + prefix))
    expected = 2 * pdist(_centres(grid, px)).sum() / n**2  # over all n*n (query, key) pairs
    np.testing.assert_allclose(mean_attention_distance(attn, grid, px, prefix), [expected] * 3)


def test_mean_distance_of_real_model_is_within_the_image(tiny_model):
    attn, out = collect_attention(tiny_model, torch.randn(2, 3, 32, 32))
    for a in attn:
        d = mean_attention_distance(a, out["grid"], 8, 1)
        assert d.shape == (2,)
        assert np.all(d > 0) and np.all(d <= np.hypot(24, 24))


def test_collect_attention_needs_a_transformer():
    with pytest.raises(InspectError, match="Vision Transformer"):
        collect_attention(torch.nn.Linear(2, 2), torch.randn(1, 2))
