"""The published MAE encoder layouts load as starting points (issue #24): timm's
`vit_*_patch16_224.mae` state dicts and transformers' `ViTMAEModel` / `ViTMAEForPreTraining`
directories give the features of those libraries' own models (random weights, fp32, within
1e-4), take a fresh head for fine-tuning, and export like any ViT."""

import functools
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import vitlab
from tests.conftest import perturb_
from vitlab.cli.main import main
from vitlab.errors import CheckpointError
from vitlab.preprocess import eval_transform
from vitlab.weights import hf
from vitlab.weights.io import RawCheckpoint, read_raw

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)  # timm's names
N_PATCHES = (32 // 8) ** 2
DROPPED = (
    "dropped the MAE decoder ({n} tensors) of {name}: fine-tuning and export use the encoder only"
)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


# ----------------------------------------------------------------------------------- timm
def _timm_mae(tmp_path, suffix=".safetensors"):
    """timm's own `vit_base_patch16_224.mae` (headless: num_classes=0 in its pretrained cfg),
    at the tiny size, with random weights, saved as a plain state dict."""
    ref = perturb_(timm.create_model("vit_base_patch16_224.mae", pretrained=False, **TINY)).eval()
    assert ref.num_classes == 0 and ref.global_pool == "token"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / f"mae{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    return ref, path, sd


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_mae_features_match_timm(tmp_path, suffix):
    ref, path, _ = _timm_mae(tmp_path, suffix)
    ours = vitlab.load_checkpoint(path, num_heads=4)  # timm's files do not store head counts
    cfg = ours.cfg
    assert cfg.extra["source"] == "timm" and cfg.num_classes == 0
    assert (cfg.pool, cfg.class_token, cfg.fc_norm) == ("token", True, False)
    assert cfg.layer_norm_eps == 1e-6 and cfg.representation_size is None
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), ref.forward_features(x))
        _close(ours(x), ref(x))  # the pooled class token (no head)


def test_timm_mae_loads_with_a_fresh_head(tmp_path):
    """Fine-tuning's `load_checkpoint(path, num_classes=10)` of a headless file: every encoder
    tensor from the file, a new zero head (refused before issue #24: "missing: head.weight")."""
    ref, path, sd = _timm_mae(tmp_path)
    ours = vitlab.load_checkpoint(path, num_heads=4, num_classes=10)
    own = ours.state_dict()
    assert set(own) == set(sd) | {"head.weight", "head.bias"}
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert own["head.weight"].shape == (10, 64) and not own["head.weight"].any()
    assert not own["head.bias"].any() and ours.cfg.num_classes == 10
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), ref.forward_features(x))


def test_facebookresearch_mae_file_loads_as_its_encoder(tmp_path, caplog):
    """facebookresearch/mae's MaskedAutoencoderViT state dict (under "model", as its .pth
    files hold it): timm's encoder keys, and its decoder (timm Blocks, decoder_embed/_norm/
    _pred, decoder_pos_embed, mask_token), which is dropped in one line."""
    ref, _, sd = _timm_mae(tmp_path)
    block = timm.models.vision_transformer.Block(32, 4, qkv_bias=True)
    decoder = {f"decoder_blocks.0.{k}": v for k, v in block.state_dict().items()}
    for name, module in [
        ("decoder_embed", torch.nn.Linear(64, 32)),
        ("decoder_norm", torch.nn.LayerNorm(32)),
        ("decoder_pred", torch.nn.Linear(32, 8 * 8 * 3)),
    ]:
        decoder |= {f"{name}.{k}": v for k, v in module.state_dict().items()}
    decoder |= {"mask_token": torch.zeros(1, 1, 32), "decoder_pos_embed": torch.zeros(1, 17, 32)}
    torch.save({"model": {**sd, **decoder}}, tmp_path / "mae_visualize_vit_tiny.pth")
    with caplog.at_level(logging.INFO, logger="vitlab"):
        ours = vitlab.load_checkpoint(tmp_path / "mae_visualize_vit_tiny.pth", num_heads=4)
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert said == [DROPPED.format(n=len(decoder), name="mae_visualize_vit_tiny.pth")]
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), ref.forward_features(x))


# ------------------------------------------------------------------------------------- hf
def _mae_config(**kw):
    base = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        mask_ratio=0.0,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
    )
    return transformers.ViTMAEConfig(**{**base, **kw})


def _hf_mae(tmp_path, cls="ViTMAEModel", **kw):
    ref = perturb_(getattr(transformers, cls)(_mae_config(**kw))).eval()
    ref.save_pretrained(tmp_path / cls)
    return ref, tmp_path / cls


def _mae_features(ref, x):
    """ViTMAEModel's last_hidden_state with no patch masked, in the patches' own order
    (noise = arange is the identity shuffle)."""
    encoder = getattr(ref, "vit", ref)
    noise = torch.arange(N_PATCHES, dtype=torch.float32).repeat(x.shape[0], 1)
    with torch.no_grad():
        return encoder(pixel_values=x, noise=noise).last_hidden_state


@pytest.mark.parametrize("kw", [{}, {"layer_norm_eps": 1e-6, "hidden_act": "gelu_new"}])
def test_hf_vit_mae_model_features_match_transformers(tmp_path, kw):
    ref, path = _hf_mae(tmp_path, **kw)
    ours = vitlab.load_checkpoint(path)
    cfg = ours.cfg
    assert cfg.extra["source"] == "hf" and cfg.num_classes == 0
    assert cfg.layer_norm_eps == ref.config.layer_norm_eps
    assert (cfg.pool, cfg.class_token, cfg.representation_size) == ("token", True, None)
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), _mae_features(ref, x))


@pytest.mark.parametrize("written_by", ["save_pretrained", "torch.save"])
def test_hf_vit_mae_pretraining_drops_the_decoder_in_one_line(tmp_path, caplog, written_by):
    """The decoder goes, whether the file has transformers' file names or (a state dict saved
    from memory) transformers>=5's module names (layers.N.attention.q_proj)."""
    ref, path = _hf_mae(tmp_path, "ViTMAEForPreTraining")
    if written_by == "torch.save":
        (path / "model.safetensors").unlink()
        torch.save(ref.state_dict(), path / "pytorch_model.bin")
    n = sum(k.startswith("decoder.") for k in read_raw(path).tensors)
    with caplog.at_level(logging.INFO, logger="vitlab"):
        ours = vitlab.load_checkpoint(path)
    said = [r.getMessage() for r in caplog.records if "decoder" in r.getMessage()]
    assert len(said) == 1 and said[0] == DROPPED.format(n=n, name=path.name)
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), _mae_features(ref, x))


@pytest.mark.parametrize("cls", ["ViTMAEModel", "ViTMAEForPreTraining"])
def test_hf_vit_mae_loads_with_a_fresh_head(tmp_path, cls):
    ref, path = _hf_mae(tmp_path, cls)
    ours = vitlab.load_checkpoint(path, num_classes=10)
    assert ours.head.weight.shape == (10, 64) and not ours.head.weight.any()
    assert not ours.head.bias.any()
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), _mae_features(ref, x))


def _raw(config: dict | None, keys: list[str]) -> RawCheckpoint:
    extra = {} if config is None else {"config.json": config}
    return RawCheckpoint("d", {k: torch.zeros(1) for k in keys}, extra=extra)


def test_the_mae_layout_is_told_by_config_or_keys():
    mae, vit = hf.LAYOUTS["vit_mae"], hf.LAYOUTS["vit"]
    assert hf.layout_of(_raw({"model_type": "vit_mae"}, [])) is mae
    assert hf.layout_of(_raw({"architectures": ["ViTMAEForPreTraining"]}, [])) is mae
    assert hf.layout_of(_raw(None, ["decoder.decoder_embed.weight"])) is mae
    assert hf.layout_of(_raw({"model_type": "vit"}, [])) is vit
    assert hf.layout_of(_raw(None, ["vit.embeddings.cls_token"])) is vit


def test_a_tensor_the_mae_map_does_not_take_is_named(tmp_path):
    _, path = _hf_mae(tmp_path, "ViTMAEForPreTraining")
    sd = load_file(path / "model.safetensors")
    sd["vit.encoder.layer.0.attention.attention.rel_pos"] = torch.zeros(3)
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"vit_mae.*rel_pos"):
        vitlab.load_checkpoint(path)


# -------------------------------------------------------------------------------- export
def _loaded(tmp_path, layout):
    """A fine-tuning start from `layout` (a fresh head, given values so logits show), and the
    reference features it must keep."""
    x = _x()
    if layout == "timm":
        ref, path, _ = _timm_mae(tmp_path)
        with torch.no_grad():
            want = ref.forward_features(x)
        model = vitlab.load_checkpoint(path, num_heads=4, num_classes=10)
    else:
        ref, path = _hf_mae(tmp_path, "ViTMAEForPreTraining")
        want = _mae_features(ref, x)
        model = vitlab.load_checkpoint(path, num_classes=10)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        model.head.bias.normal_(0, 0.5)
    return model, x, want


@pytest.mark.parametrize("layout", ["timm", "hf"])
def test_mae_start_exports_to_transformers_timm_and_google(tmp_path, layout):
    model, x, want = _loaded(tmp_path, layout)
    with torch.no_grad():
        logits = model(x)
    out = vitlab.save_checkpoint(model, tmp_path / "hf_out", format="hf")
    theirs = transformers.ViTForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        got = theirs(pixel_values=x, output_hidden_states=True)
    _close(got.logits, logits)
    _close(theirs.vit.layernorm(got.hidden_states[-1]), want)
    cfg = model.cfg  # the HF layout's eps 1e-12 and MLP width travel as timm_advice says
    norm = functools.partial(torch.nn.LayerNorm, eps=cfg.layer_norm_eps)
    mlp_ratio = cfg.mlp_dim / cfg.embed_dim
    twin = timm.models.vision_transformer.VisionTransformer(
        **TINY, num_classes=10, norm_layer=norm, mlp_ratio=mlp_ratio
    )
    timm_file = vitlab.save_checkpoint(model, tmp_path / "t.safetensors", format="timm")
    twin.load_state_dict(load_file(timm_file))
    with torch.no_grad():
        _close(twin.eval()(x), logits)
    google = vitlab.save_checkpoint(model, tmp_path / "g.npz", format="google")
    back = vitlab.load_checkpoint(google)
    with torch.no_grad():
        _close(back(x), logits)


def test_convert_an_hf_mae_directory(tmp_path, capsys):
    """`vitlab convert` of a ViTMAEForPreTraining directory writes the encoder as a vitlab
    checkpoint, which loads for fine-tuning."""
    ref, path = _hf_mae(tmp_path, "ViTMAEForPreTraining")
    dst = tmp_path / "encoder.safetensors"
    assert main(["convert", str(path), str(dst), "--to", "vitlab"]) == 0
    assert "hf layout" in capsys.readouterr().out
    assert not any(k.startswith("decoder") for k in load_file(dst))
    ours = vitlab.load_checkpoint(dst, num_classes=10)
    assert ours.cfg.extra["source"] == "vitlab" and not ours.head.weight.any()
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), _mae_features(ref, x))


def test_timm_hub_folder_brings_preprocessing_and_heads(tmp_path):
    """A folder as timm's `save_for_hf` writes it (what "timm:vit_base_patch16_224.mae"
    downloads): its config.json gives the head count and the `.mae` preprocessing (ImageNet
    mean and std, crop_pct 0.9), so vitlab's eval transform is timm's own (to one uint8 level)."""
    ref, _, _ = _timm_mae(tmp_path)
    timm.models.save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
    ours = vitlab.load_checkpoint(tmp_path / "hub")  # no num_heads: the folder says 4
    assert ours.cfg.num_heads == 4 and ours.cfg.crop_pct == 0.9
    assert ours.cfg.mean == ref.pretrained_cfg["mean"] and ours.cfg.std == ref.pretrained_cfg["std"]
    x = _x()
    with torch.no_grad():
        _close(ours.forward_features(x), ref.forward_features(x))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8))
    data = timm.data.resolve_data_config({"input_size": (3, 32, 32)}, model=ref)
    theirs = timm.data.create_transform(**data)(img)  # resize the short side to 35, crop 32
    ours_x = eval_transform(ours.data_config)(img)
    assert ours_x.shape == theirs.shape == (3, 32, 32)
    level = 1 / 255 / min(ours.cfg.std)  # one uint8 level, where the resizers round apart
    assert (ours_x - theirs).abs().max().item() <= level + 1e-6


def test_every_layout_drops_pretraining_parts_in_the_same_line(tmp_path, caplog):
    """vitlab's own pre-training checkpoints (`mae.*` beside the encoder) say it as the MAE
    layouts do: one definition, `adapter.drop_parts`."""
    model = vitlab.create_model("vit_test", num_classes=0)
    extra = {"mae.mask_token": torch.zeros(1, 1, 32), "mae.pred.weight": torch.zeros(4, 32)}
    path = vitlab.save_checkpoint(model, tmp_path / "pre.safetensors", extra=extra)
    with caplog.at_level(logging.INFO, logger="vitlab"):
        vitlab.load_checkpoint(path, num_classes=3)
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert said == [DROPPED.format(n=2, name="pre.safetensors")]
