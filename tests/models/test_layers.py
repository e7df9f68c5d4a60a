"""The paper's building blocks (vitlab.models.layers): attention against its equations and
against the explicit path, sin-cos embeddings against their formula, position-embedding
resampling against torch's interpolate, DropPath and the bf16 training attention path."""

import math

import numpy as np
import torch
import torch.nn.functional as F

import vitlab
from tests.conftest import perturb_
from vitlab.models import layers
from vitlab.models.layers import DropPath, posemb_sincos_2d, resample_pos_embed


def _tiny(**kw):
    return perturb_(vitlab.create_model("vit_test", **kw)).eval()


def _pair(**kw):
    eager = perturb_(vitlab.create_model("vit_test", **kw))
    twin = vitlab.create_model("vit_test", **kw)
    twin.load_state_dict(eager.state_dict())
    return eager, twin


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


def test_resample_identity_and_bicubic():
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pe, (4, 4)) is pe
    up = resample_pos_embed(pe, (8, 8))
    grid = pe[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(up[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 64, 8))


def test_dropout_and_drop_path_only_in_training():
    m = _tiny(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert not torch.allclose(m(x), m(x))


def _bf16_step(model, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach().float(), {n: p.grad for n, p in model.named_parameters()}


def test_bf16_training_on_cpu_takes_the_explicit_path_with_sdpa_gradients(monkeypatch):

    fast, ref = _pair()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        layers.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    loss_fast, grads_fast = _bf16_step(fast.train(), x, y)
    assert calls == []  # the explicit path
    monkeypatch.setattr(layers, "attention_path", lambda *a: "fused")
    loss_ref, grads_ref = _bf16_step(ref.train(), x, y)
    assert len(calls) == len(ref.blocks)  # the fused kernel, for reference
    torch.testing.assert_close(loss_fast, loss_ref, rtol=2e-2, atol=2e-2)
    for name, g in grads_ref.items():
        scale = g.abs().max().clamp_min(1e-6)
        assert (grads_fast[name] - g).abs().max() / scale < 5e-2, name
    calls.clear()
    with torch.inference_mode():
        fast.eval().to(torch.bfloat16)(x.bfloat16())
    assert len(calls) == len(fast.blocks)  # inference keeps the fused kernel


def test_the_attention_path_is_chosen_once_per_device_dtype_and_gradients(monkeypatch):
    """Each attention module asks the runtime's rule once for every (device, dtype, gradients)
    it meets and reads its answer back afterwards, not on every forward call: three bf16
    training steps and three inference passes ask it twice per block."""
    asked = []
    rule = layers.attention_path
    monkeypatch.setattr(layers, "attention_path", lambda *a: asked.append(a[1:]) or rule(*a))
    m = _tiny().train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    for _ in range(3):
        _bf16_step(m, x, y)
    assert asked == [(torch.bfloat16, True)] * m.cfg.depth
    m.eval()
    for _ in range(3):
        with torch.inference_mode():
            m(x)
    assert asked[m.cfg.depth :] == [(torch.float32, False)] * m.cfg.depth
    assert m.blocks[0].attn.path_for(torch.randn(1, 2, 5, 16, dtype=torch.bfloat16)) == "fused"
    assert asked[2 * m.cfg.depth :] == [(torch.bfloat16, False)]  # a new one is asked once


def test_compiled_bf16_training_chooses_the_path_in_its_graph():
    """Under torch.compile (fullgraph, with activation checkpointing, which refuses side
    effects) the explicit path is traced into the graph and the module's memory is left alone;
    an eager step in between fills it without making the compiled model trace again."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    m = _tiny().train()
    m.set_grad_checkpointing(True)
    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(m, fullgraph=True, backend=backend)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    _bf16_step(compiled, x, y)
    assert all(blk.attn._paths == {} for blk in m.blocks)
    _bf16_step(m, x, y)
    assert m.blocks[0].attn._paths == {("cpu", torch.bfloat16, True): "explicit"}
    _bf16_step(compiled, x, y)
    assert backend.frame_count == 1


def test_drop_path_is_torchvisions_stochastic_depth():
    """The native DropPath replaces torchvision.ops.StochasticDepth(p, "row") (which cost
    `import vitlab.models` all of torchvision): the same mask from the same seed, rows kept
    scaled by 1 / (1 - p), identity in eval."""
    from torchvision.ops import StochasticDepth

    x = torch.randn(64, 5, 8)
    ours, ref = DropPath(0.3).train(), StochasticDepth(0.3, "row").train()
    torch.manual_seed(0)
    a = ours(x)
    torch.manual_seed(0)
    torch.testing.assert_close(a, ref(x))
    kept = a.flatten(1).abs().sum(1) > 0
    torch.testing.assert_close(a[kept], x[kept] / 0.7)
    assert 0 < int(kept.sum()) < 64
    assert torch.equal(ours.eval()(x), x)
