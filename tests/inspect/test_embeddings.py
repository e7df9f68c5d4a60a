import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import cosine_similarity

import vitlab
from tests.conftest import perturb_
from vitlab.inspect import (
    InspectError,
    patch_embedding_components,
    position_embedding_similarity,
    position_embeddings,
)


@pytest.mark.parametrize(
    "name, kw", [("vit_test", {}), ("vit_nano_p4", {}), ("vit_s16", {"depth": 1})]
)
def test_sincos_similarity_peaks_at_own_position_and_decays(name, kw):
    model = vitlab.create_model(name, pos_embed="sincos", **kw)
    sim = position_embedding_similarity(model)
    assert not sim.learned
    gh, gw = sim.similarity.shape[:2]
    ys, xs = np.meshgrid(range(gh), range(gw), indexing="ij")
    for i in range(gh):
        for j in range(gw):
            m, dist = sim.similarity[i, j], np.hypot(ys - i, xs - j)
            assert np.unravel_index(m.argmax(), m.shape) == (i, j)
            assert m[i, j] == pytest.approx(1.0) and np.sum(m > 1 - 1e-9) == 1
            assert m[dist == 1].min() > m[dist >= 2].max()  # neighbours first
            assert spearmanr(dist.ravel(), m.ravel())[0] < -0.75  # and it keeps falling


def test_learned_similarity_matches_sklearn_and_skips_class_token():
    model = perturb_(vitlab.create_model("vit_test"), 0.5)
    grid, learned = position_embeddings(model)
    assert learned and grid.shape == (4, 4, 32)
    pos = model.pos_embed.detach()[0, 1:].numpy()  # the class token's entry comes first
    ref = cosine_similarity(pos).reshape(4, 4, 4, 4)
    np.testing.assert_allclose(position_embedding_similarity(model).similarity, ref, atol=1e-6)


def test_similarity_without_class_token_entry():
    model = perturb_(vitlab.create_model("vit_test", pool="gap"), 0.5)
    pos = model.pos_embed.detach()[0].numpy()  # no class token at all
    ref = cosine_similarity(pos).reshape(4, 4, 4, 4)
    np.testing.assert_allclose(position_embedding_similarity(model).similarity, ref, atol=1e-6)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_filter_components_match_sklearn_pca(in_chans):
    model = vitlab.create_model("vit_nano_p4", in_chans=in_chans)
    comps = patch_embedding_components(model, k=6)
    w = model.patch_embed.proj.weight.detach().double().numpy()  # (D, C, P, P)
    pca = PCA(n_components=6).fit(w.reshape(w.shape[0], -1))
    assert comps.images.shape == (6, 4, 4, in_chans)
    ours = comps.images.transpose(0, 3, 1, 2).reshape(6, -1)  # back to (k, C*P*P)
    signs = np.sign((ours * pca.components_).sum(axis=1))
    np.testing.assert_allclose(ours * signs[:, None], pca.components_, atol=1e-8)
    np.testing.assert_allclose(comps.explained_variance_ratio, pca.explained_variance_ratio_)


def test_filter_components_refuse_a_cnn_stem():
    model = vitlab.create_model("vit_test")
    model.patch_embed = torch.nn.Conv2d(3, 32, 8, 8)  # stands in for a hybrid's CNN stem
    with pytest.raises(InspectError, match="CNN stem"):
        patch_embedding_components(model)
