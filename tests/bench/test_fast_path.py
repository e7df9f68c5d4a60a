"""The model's fast path: torch.compile without graph breaks (fullgraph=True) for inference
and training, giving eager's outputs and gradients; activation checkpointing."""

import pytest
import torch
import torch.nn.functional as F

import vitlab
from tests.conftest import perturb_


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


def _bf16_step(model, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach().float(), {n: p.grad for n, p in model.named_parameters()}


def test_bf16_training_on_cpu_takes_the_explicit_path_with_sdpa_gradients(monkeypatch):
    from vitlab.models import layers

    fast, ref = _pair()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        layers.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    loss_fast, grads_fast = _bf16_step(fast.train(), x, y)
    assert calls == []  # the explicit path
    monkeypatch.setattr(layers, "_explicit_is_faster", lambda q: False)
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


def test_attention_path_choice_on_cpu():
    from vitlab.models.layers import _explicit_is_faster

    def q(n, dtype=torch.float32, grad=True):
        return torch.randn(1, 2, n, 16, dtype=dtype).requires_grad_(grad)

    assert not _explicit_is_faster(q(50))  # fp32: the fused kernel
    assert _explicit_is_faster(q(197, torch.bfloat16))
    assert not _explicit_is_faster(q(50, grad=False))  # inference: always the fused kernel
