"""Position-embedding resampling (paper section 3.2) equals each ecosystem's own: vit_jax's
scipy zoom, timm's two loaders, transformers and torchvision; and loading a 224 px checkpoint at
384 px resamples the way the file's own library would."""

import numpy as np
import pytest
import scipy.ndimage
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.errors import ConfigError
from vitlab.weights import posemb

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
from timm.layers import resample_abs_pos_embed  # noqa: E402
from torchvision.models.vision_transformer import interpolate_embeddings  # noqa: E402

D, OLD, NEW = 32, 14, 24  # a 224 px grid of 16 px patches, fine-tuned at 384 px


def _close(a, b, tol=1e-5):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol


def _scipy_zoom(pos, new):
    """vit_jax's checkpoint loader: class token kept, grid zoomed with order-1 splines."""
    tok, grid = pos[:, :1], pos[0, 1:].numpy()
    old = int(np.sqrt(len(grid)))
    grid = scipy.ndimage.zoom(grid.reshape(old, old, -1), (new / old, new / old, 1), order=1)
    return torch.cat([tok, torch.from_numpy(grid).reshape(1, new * new, -1)], dim=1)


def _hf_resample(pos, new):
    cfg = transformers.ViTConfig(hidden_size=D, image_size=OLD * 16, patch_size=16)
    emb = transformers.models.vit.modeling_vit.ViTEmbeddings(cfg)
    with torch.no_grad():
        emb.position_embeddings.copy_(pos)
        tokens = torch.zeros(1, new * new + 1, D)
        return emb.interpolate_pos_encoding(tokens, new * 16, new * 16)


def _torchvision_resample(pos, new):
    return interpolate_embeddings(new * 16, 16, {"encoder.pos_embedding": pos})[
        "encoder.pos_embedding"
    ]


REFERENCES = {
    "google": _scipy_zoom,
    "timm_npz": lambda p, n: resample_abs_pos_embed(
        p, (n, n), interpolation="bilinear", antialias=False
    ),
    "timm": lambda p, n: resample_abs_pos_embed(p, (n, n), interpolation="bicubic"),
    "hf": _hf_resample,
    "torchvision": _torchvision_resample,
}


@pytest.mark.parametrize("method", list(REFERENCES))
@pytest.mark.parametrize("new", [NEW, 7])  # up (fine-tuning at 384) and down
def test_method_equals_library(method, new):
    pos = torch.randn(1, 1 + OLD * OLD, D)
    ours = posemb.resample(pos, (new, new), num_prefix_tokens=1, method=method)
    _close(ours, REFERENCES[method](pos, new))


def test_methods_really_differ():
    pos = torch.randn(1, 1 + OLD * OLD, D)
    a, b = (posemb.resample(pos, (NEW, NEW), 1, m) for m in ("google", "torchvision"))
    assert (a - b).abs().max() > 1e-3


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ConfigError, match="resampling"):
        posemb.method_for("timm", "lanczos")


def _small_vit():
    return perturb_(
        vitlab.create_model("vit_b16", embed_dim=D, depth=1, num_heads=2, mlp_dim=64)
    ).eval()


def test_google_file_at_384_uses_scipy_zoom(tmp_path):
    path = vitlab.save_checkpoint(_small_vit(), tmp_path / "v.npz", format="google")
    with np.load(path) as f:  # an original file: no vitlab config array
        np.savez(tmp_path / "orig.npz", **{k: f[k] for k in f.files if not k.startswith("vitlab")})
    ours = vitlab.load_checkpoint(tmp_path / "orig.npz", img_size=384, num_heads=2)
    with np.load(path) as f:
        pos = torch.from_numpy(f["Transformer/posembed_input/pos_embedding"])
    _close(ours.pos_embed.detach(), _scipy_zoom(pos, NEW))


def test_timm_file_at_384_matches_timm_loader(tmp_path):
    ref = _small_vit()
    path = vitlab.save_checkpoint(ref, tmp_path / "t.safetensors", format="timm")
    theirs = timm.create_model(
        "vit_base_patch16_384",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path), "num_classes": 1000},
        embed_dim=D,
        depth=1,
        num_heads=2,
        mlp_ratio=2.0,
    )
    ours = vitlab.load_checkpoint(path, img_size=384, num_heads=2)
    _close(ours.pos_embed.detach(), theirs.pos_embed.detach())


def test_hf_dir_at_384_matches_transformers(tmp_path):
    ref = _small_vit()
    out = vitlab.save_checkpoint(ref, tmp_path / "hf", format="hf")
    ours = vitlab.load_checkpoint(out, img_size=384)
    _close(ours.pos_embed.detach(), _hf_resample(ref.pos_embed.detach(), NEW))


def test_torchvision_file_at_384_matches_torchvision(tmp_path):
    ref = _small_vit()
    path = vitlab.save_checkpoint(ref, tmp_path / "tv.pth", format="torchvision")
    ours = vitlab.load_checkpoint(path, img_size=384, num_heads=2)
    sd = torch.load(path, weights_only=True)
    _close(ours.pos_embed.detach(), _torchvision_resample(sd["encoder.pos_embedding"], NEW))


def test_resampling_is_overridable(tmp_path):
    ref = _small_vit()
    path = vitlab.save_checkpoint(ref, tmp_path / "tv.pth", format="torchvision")
    ours = vitlab.load_checkpoint(path, img_size=384, num_heads=2, resample="google")
    _close(ours.pos_embed.detach(), _scipy_zoom(ref.pos_embed.detach(), NEW))
