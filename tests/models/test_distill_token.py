"""DeiT's distillation token (Touvron et al. 2021) in vitlab's ViT: a second prefix token with
its own position embedding and head; inference averages the two heads' logits."""

import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.errors import ConfigError

TINY = dict(num_classes=5, img_size=16, patch_size=4, distill_token=True)


def _model(**kw):
    return perturb_(vitlab.create_model("vit_test", **{**TINY, **kw}), 0.2).eval()


def test_prefix_tokens_and_parameters():
    m = _model()
    assert m.cfg.num_prefix_tokens == 2
    assert m.pos_embed.shape[1] == 16 + 2
    assert {"dist_token", "head_dist.weight", "head_dist.bias"} <= set(m.state_dict())
    assert "dist_token" in m.no_weight_decay()
    gap = _model(pool="gap")  # no class token: the distillation token alone before the patches
    assert gap.cfg.num_prefix_tokens == 1 and gap.pos_embed.shape[1] == 17


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_inference_averages_the_two_heads(pool):
    m, x = _model(pool=pool), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        feats = m.forward_features(x)
        cls_logits = m.forward_head(m.pool(feats))
        dist_logits = m.head_dist(feats[:, int(bool(m.cfg.class_token))])
        a, b = m.forward_heads(x)
        y = m(x)
    torch.testing.assert_close(a, cls_logits)
    torch.testing.assert_close(b, dist_logits)
    torch.testing.assert_close(y, (cls_logits + dist_logits) / 2)
    assert not torch.allclose(a, b)  # two heads, two answers
    out = m.forward_intermediates(x)
    torch.testing.assert_close(out["logits"], y)
    torch.testing.assert_close(out["logits_dist"], dist_logits)
    assert out["embed"].shape[1] == 16 + m.cfg.num_prefix_tokens


def test_without_distill_token_forward_heads_gives_the_class_head_twice():
    m, x = _model(distill_token=False), torch.randn(2, 3, 16, 16)
    a, b = m.forward_heads(x)
    assert a is b
    torch.testing.assert_close(a, m(x))


def test_new_head_resets_both_heads_and_the_dist_token_is_trained():
    m = _model()
    m.reset_classifier(3)
    assert m.head.weight.shape[0] == m.head_dist.weight.shape[0] == 3
    assert not m.head_dist.weight.any() and not m.head.weight.any()
    perturb_(m, 0.2).train()  # zero heads pass no gradient back
    a, b = m.forward_heads(torch.randn(2, 3, 16, 16))
    (a.sum() + b.sum() * 2).backward()
    assert m.dist_token.grad is not None and m.dist_token.grad.abs().sum() > 0


def test_resolution_change_keeps_both_prefix_embeddings():
    m = _model()
    prefix = m.pos_embed[:, :2].clone()
    m.set_image_size(32)
    assert m.pos_embed.shape[1] == 64 + 2
    torch.testing.assert_close(m.pos_embed[:, :2], prefix)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_pre_logits_with_a_distill_token_is_refused():
    with pytest.raises(ConfigError, match="representation_size"):
        vitlab.create_model("vit_test", distill_token=True, representation_size=16)


def test_registry_deit_matches_timm_shapes():
    timm = pytest.importorskip("timm")
    ours = vitlab.create_model("deit_tiny_distilled_patch16_224", num_classes=7, img_size=32)
    ref = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=7, img_size=32)
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert set(mine) == set(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)
