import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitlab
from tests.conftest import perturb_
from vitlab.errors import ConfigError
from vitlab.models import layers
from vitlab.models.layers import posemb_sincos_2d, resample_pos_embed


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


def test_sdpa_path_equals_explicit_path_and_rows_sum_to_one():
    m = _tiny(num_heads=4)
    x = torch.randn(2, 3, 32, 32)
    out = m.forward_intermediates(x)
    torch.testing.assert_close(out["logits"], m(x), atol=1e-5, rtol=0)
    assert len(out["attn"]) == len(out["blocks"]) == m.cfg.depth
    for a in out["attn"]:
        assert a.shape == (2, 4, 17, 17)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 17), atol=1e-5, rtol=0)
        assert (a >= 0).all()
    torch.testing.assert_close(out["norm"], m.forward_features(x), atol=1e-5, rtol=0)
    plain = m.forward_intermediates(x, return_attn=False)
    assert plain["attn"] == []
    torch.testing.assert_close(plain["logits"], out["logits"], atol=1e-5, rtol=0)


def test_attention_matches_textbook_formula():
    """Equations 5-8 of Appendix A, written out independently of the module."""
    m = _tiny(depth=1, num_heads=2)
    blk = m.blocks[0]
    x = torch.randn(2, 17, 32)
    h = blk.norm1(x)
    W, b = blk.attn.qkv.weight, blk.attn.qkv.bias
    q, k, v = (h @ W.T + b).split(32, dim=-1)
    heads = []
    for i in range(2):
        s = slice(16 * i, 16 * (i + 1))
        a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(16), dim=-1)
        heads.append(a @ v[..., s])
    msa = torch.cat(heads, dim=-1) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    y = x + msa
    y = y + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(y))))
    torch.testing.assert_close(blk(x), y, atol=1e-5, rtol=0)


def test_sincos_matches_formula():
    gh, gw, dim = 3, 5, 16
    pe = posemb_sincos_2d((gh, gw), dim)[0].numpy()
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / (quarter - 1))
    for row in range(gh):
        for col in range(gw):
            expect = np.concatenate(
                [np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)]
            )
            np.testing.assert_allclose(pe[row * gw + col], expect, atol=1e-6)


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


def test_resample_identity_and_bicubic():
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pe, (4, 4)) is pe
    up = resample_pos_embed(pe, (8, 8))
    grid = pe[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(up[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 64, 8))


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_inference_fast_path_equals_the_plain_path(act, dtype):
    """Inference on the CPU runs oneDNN linears with the bias and GELU fused; with gradients on,
    the plain F.linear + F.gelu path runs. Both must give the same logits."""
    if layers._ONEDNN_LINEAR is None or (dtype == torch.bfloat16 and not layers._ONEDNN_BF16):
        pytest.skip("this PyTorch build or CPU has no oneDNN linear for this dtype")
    m = _tiny(act=act, qkv_bias=act == "gelu").to(dtype)
    x = torch.randn(3, 3, 32, 32, dtype=dtype)
    calls = []
    op = layers._ONEDNN_LINEAR
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layers, "_ONEDNN_LINEAR", lambda *a: calls.append(a[3:]) or op(*a))
        with torch.no_grad():
            fast = m(x)
    plain = m(x).detach()  # gradients enabled: F.linear
    assert ("gelu", [], "tanh" if act == "gelu_tanh" else "none") in calls
    assert len(calls) == 4 * m.cfg.depth  # qkv, proj, fc1 + GELU, fc2 in every block
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(fast, plain, atol=tol, rtol=tol)


def test_packed_inference_weights_follow_every_weight_change():
    """Inside `PackedWeights`, CPU inference packs each linear weight once for oneDNN and
    reuses it; an optimiser step, load_state_dict and a dtype round trip must each be seen,
    never a stale packed copy. Outside the block nothing is packed or kept."""
    if layers._ONEDNN_PACK is None:
        pytest.skip("this PyTorch build has no oneDNN weight packing")
    m = _tiny()
    x = torch.randn(2, 3, 32, 32)
    packs = []
    pack = layers._ONEDNN_PACK
    scope = layers.PackedWeights()

    def check(expected_packs: int, inside: bool = True) -> None:
        packs.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(layers, "_ONEDNN_PACK", lambda w, b: packs.append(w) or pack(w, b))
            with torch.inference_mode():
                if inside:
                    with scope:
                        fast = m(x)
                else:
                    fast = m(x)
        assert len(packs) == expected_packs
        torch.testing.assert_close(fast, m(x).detach(), atol=1e-5, rtol=1e-5)

    n = 4 * m.cfg.depth  # qkv, proj, fc1, fc2 in every block
    check(0, inside=False)
    check(n)
    check(0)  # reused
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(x).sum().backward()
    opt.step()
    check(n)
    m.load_state_dict(_tiny().state_dict())
    check(n)
    m.to(torch.bfloat16).to(torch.float32)
    check(n)
    check(0, inside=False)


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


def test_dropout_and_drop_path_only_in_training():
    m = _tiny(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert not torch.allclose(m(x), m(x))


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
