import pytest
import torch
import torch.nn.functional as F

import vitlab
from tests.conftest import perturb_
from vitlab.errors import ConfigError


def _tiny(**kw):
    return perturb_(vitlab.create_model("vit_test", **kw)).eval()


def test_forward_shapes_token_and_gap():
    x = torch.randn(3, 3, 32, 32)
    for pool in ("token", "gap"):
        m = _tiny(pool=pool)
        assert m(x).shape == (3, 10)
        feats = m.forward_features(x)
        assert feats.shape == (3, 16 + (pool == "token"), 32)
        assert (m.cls_token is not None) == (pool == "token")


def test_sincos_model_has_no_learned_pos_embed_and_any_size_works():
    m = _tiny(pos_embed="sincos")
    assert "pos_embed" not in m.state_dict()
    assert m(torch.randn(1, 3, 48, 40)).shape == (1, 10)


def test_static_model_rejects_other_sizes_with_a_clear_error():
    m = _tiny()
    with pytest.raises(ConfigError, match="set_image_size"):
        m(torch.randn(1, 3, 48, 48))
    with pytest.raises(ConfigError, match="not divisible by the patch size"):
        m(torch.randn(1, 3, 30, 32))


def test_dynamic_size_resamples_on_the_fly_and_set_image_size_once():
    m = _tiny(dynamic_img_size=True)
    x = torch.randn(2, 3, 48, 48)
    dyn = m(x)
    m.set_image_size(48)
    assert m.cfg.img_size == 48 and m.pos_embed.shape == (1, 37, 32)
    torch.testing.assert_close(m(x), dyn, atol=1e-5, rtol=0)


def test_set_image_size_keeps_class_token_entry():
    m = _tiny()
    before = m.pos_embed.detach().clone()
    m.set_image_size(64)
    assert m.pos_embed.shape == (1, 65, 32)
    torch.testing.assert_close(m.pos_embed[:, 0], before[:, 0])
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
def test_configurable_knobs(act):
    m = vitlab.create_model("vit_test", act=act, layer_norm_eps=1e-12, qkv_bias=False, in_chans=1)
    assert m.blocks[0].mlp.act == act
    assert m.blocks[0].norm1.eps == 1e-12 and m.norm.eps == 1e-12
    assert m.blocks[0].attn.qkv.bias is None
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert m.cfg.mean == (0.5,)


def test_pre_logits_and_zero_head():
    m = vitlab.create_model("vit_test", representation_size=24, zero_head=True).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.count_nonzero(m(x)) == 0
    pre = m.forward_head(m.pool(m.forward_features(x)), pre_logits=True)
    assert pre.shape == (2, 24) and pre.abs().max() <= 1  # tanh
    m.reset_classifier(3, ("a", "b", "c"))
    assert m(x).shape == (2, 3) and m.cfg.class_names == ("a", "b", "c")


def test_backward_reaches_every_parameter():
    m = _tiny(pool="gap")
    m.train()
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert missing == []


def test_bad_configs_are_clear():
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        vitlab.create_model("vit_test", num_heads=3)
    with pytest.raises(ConfigError, match="unknown ViTConfig field"):
        vitlab.create_model("vit_test", depthh=3)
    with pytest.raises(ConfigError, match="not divisible by patch_size"):
        vitlab.create_model("vit_test", img_size=36)
    with pytest.raises(ConfigError, match="pool"):
        vitlab.create_model("vit_test", pool="max")


# ------------------------------------------------------------ compile and checkpointing
def _pair(**kw):
    eager = perturb_(vitlab.create_model("vit_test", **kw))
    twin = vitlab.create_model("vit_test", **kw)
    twin.load_state_dict(eager.state_dict())
    return eager, twin


def _loss_and_grads(model, x, y, params=None):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in (params or model).named_parameters()}


def test_compiled_inference_matches_eager():
    torch._dynamo.reset()
    model = perturb_(vitlab.create_model("vit_test")).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_training_matches_eager(checkpointing):
    """aot_eager traces forward and backward exactly as inductor would (graph breaks included)
    without generating C++, which keeps the test fast; inference above covers inductor."""
    torch._dynamo.reset()
    eager, twin = _pair(drop_path_rate=0.0)
    twin.set_grad_checkpointing(checkpointing)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss_a, grads_a = _loss_and_grads(eager.train(), x, y)
    loss_b, grads_b = _loss_and_grads(compiled.train(), x, y, params=twin)
    torch.testing.assert_close(loss_b, loss_a)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, msg=name)


def test_grad_checkpointing_recomputes_blocks_and_keeps_gradients():
    eager, ckpt = _pair()
    ckpt.set_grad_checkpointing(True)
    calls = []
    for blk in ckpt.blocks:
        blk.register_forward_pre_hook(lambda *_: calls.append(1))
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    loss_a, grads_a = _loss_and_grads(eager.train(), x, y)
    loss_b, grads_b = _loss_and_grads(ckpt.train(), x, y)
    assert len(calls) == 2 * len(ckpt.blocks)  # every block ran again in the backward pass
    torch.testing.assert_close(loss_b, loss_a)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, msg=name)
    calls.clear()
    with torch.no_grad():
        ckpt(x)
    assert len(calls) == len(ckpt.blocks)  # nothing to save for a backward pass: no checkpoints
