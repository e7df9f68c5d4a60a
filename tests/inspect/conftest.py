import numpy as np
import pytest
import torch
from scipy.special import erf

import vitlab
from tests.conftest import perturb_


@pytest.fixture
def tiny_model():
    """vit_test (2 blocks, D 32, 2 heads, 32 px, patch 8) with non-trivial random weights."""
    return perturb_(vitlab.create_model("vit_test"), 0.3).eval()


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def numpy_attention(model, images: torch.Tensor) -> list[np.ndarray]:
    """The attention probabilities of every block, recomputed in NumPy from the weights alone
    (equations 1-3 and Appendix A): (B, heads, N, N) per block."""
    cfg = model.cfg
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    x = images.double().numpy()
    B, C, H, W = x.shape
    P, D, nh = cfg.patch_size, cfg.embed_dim, cfg.num_heads
    gh, gw = H // P, W // P
    patches = x.reshape(B, C, gh, P, gw, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, -1)
    t = patches @ sd["patch_embed.proj.weight"].reshape(D, -1).T + sd["patch_embed.proj.bias"]
    pos = model.pos_embed.detach().double().numpy()
    prefix = [sd[k] for k in ("cls_token", "dist_token") if k in sd]  # class, then DeiT's
    if prefix:
        t = np.concatenate([np.repeat(p, B, axis=0) for p in prefix] + [t], axis=1)
    t = t + pos
    maps = []
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        h = _ln(t, sd[p + "norm1.weight"], sd[p + "norm1.bias"], cfg.layer_norm_eps)
        qkv = h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        q, k, v = (
            qkv[..., j * D : (j + 1) * D].reshape(B, -1, nh, D // nh).transpose(0, 2, 1, 3)
            for j in range(3)
        )
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D // nh)
        a = np.exp(s - s.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        maps.append(a)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(B, -1, D)
        t = t + o @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = _ln(t, sd[p + "norm2.weight"], sd[p + "norm2.bias"], cfg.layer_norm_eps)
        h = h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        t = t + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return maps


def numpy_rollout(maps: list[np.ndarray]) -> np.ndarray:
    """Abnar & Zuidema's rollout, written out: (B, N, N)."""
    result = None
    for a in maps:
        a = a.mean(axis=1)
        a = a + np.eye(a.shape[-1])
        a = a / a.sum(-1, keepdims=True)
        result = a if result is None else np.einsum("bij,bjk->bik", a, result)
    return result
