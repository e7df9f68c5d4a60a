"""The kernels the paper's blocks call (vitlab.runtime.kernels): oneDNN linears with weight
packing, each checked against the plain PyTorch computation, and the attention path, chosen once
per (device, dtype, gradients) an attention module meets."""

import subprocess
import sys

import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.runtime import kernels


def _tiny(**kw):
    return perturb_(vitlab.create_model("vit_test", **kw)).eval()


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_inference_fast_path_equals_the_plain_path(act, dtype):
    """Inference on the CPU runs oneDNN linears with the bias and GELU fused; with gradients on,
    the plain F.linear + F.gelu path runs. Both must give the same logits."""
    if kernels._ONEDNN_LINEAR is None or (dtype == torch.bfloat16 and not kernels._ONEDNN_BF16):
        pytest.skip("this PyTorch build or CPU has no oneDNN linear for this dtype")
    m = _tiny(act=act, qkv_bias=act == "gelu").to(dtype)
    x = torch.randn(3, 3, 32, 32, dtype=dtype)
    calls = []
    op = kernels._ONEDNN_LINEAR
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "_ONEDNN_LINEAR", lambda *a: calls.append(a[3:]) or op(*a))
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
    if kernels._ONEDNN_PACK is None:
        pytest.skip("this PyTorch build has no oneDNN weight packing")
    m = _tiny()
    x = torch.randn(2, 3, 32, 32)
    packs = []
    pack = kernels._ONEDNN_PACK
    scope = kernels.PackedWeights()

    def check(expected_packs: int, inside: bool = True) -> None:
        packs.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(kernels, "_ONEDNN_PACK", lambda w, b: packs.append(w) or pack(w, b))
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


def test_attention_path_choice_on_cpu():
    cpu, gpu, bf16 = torch.device("cpu"), torch.device("cuda"), torch.bfloat16
    assert kernels.attention_path(cpu, torch.float32, True) == "fused"  # fp32: the fused kernel
    assert kernels.attention_path(cpu, bf16, True) == "explicit"
    assert kernels.attention_path(cpu, torch.float16, True) == "explicit"
    assert kernels.attention_path(cpu, bf16, False) == "fused"  # inference: the fused kernel
    assert kernels.attention_path(gpu, bf16, True) == "fused"


def test_the_models_load_only_the_kernels():
    """`vitlab.models` imports `vitlab.runtime.kernels` alone: the package's `__init__`
    re-exports nothing, so neither the matmul probes nor the device helpers come with it."""
    probe = (
        "import sys, vitlab.models, vitlab.runtime.kernels\n"
        "print(' '.join(m for m in sys.modules if m.startswith('vitlab.runtime')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert sorted(out.stdout.split()) == ["vitlab.runtime", "vitlab.runtime.kernels"]
