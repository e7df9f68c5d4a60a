import pytest
import torch
from safetensors.torch import save_file

from vitlab.data.datasets import load_data
from vitlab.train.config import build_config
from vitlab.train.run import fit, model_for_data

timm = pytest.importorskip("timm")
from timm.layers import resample_abs_pos_embed  # noqa: E402

HEADS = {"num_heads": 2}  # timm's files do not store it, and D 32 is no registered width


@pytest.fixture
def timm_checkpoint(tmp_path):
    """A small timm ViT (7 classes, 32 px, patch 8) saved as timm saves state dicts."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
        num_heads=2, num_classes=7,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / "timm_vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.state_dict()


def test_finetune_model_gets_a_zero_head_and_resampled_position_embeddings(timm_checkpoint):
    path, sd = timm_checkpoint
    cfg = build_config("finetune_paper", {"init_from": str(path), "data": "synthetic",
                                          "img_size": 48, "model_args": HEADS})  # fmt: skip
    data = load_data("synthetic")
    model = model_for_data(cfg, data)
    assert model.cfg.num_classes == 4 and model.cfg.img_size == 48
    assert model.cfg.class_names == data.class_names
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    ref = resample_abs_pos_embed(sd["pos_embed"], new_size=(6, 6), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), ref, atol=1e-5, rtol=1e-4)
    assert torch.equal(model.blocks[1].attn.qkv.weight.detach(), sd["blocks.1.attn.qkv.weight"])


def test_finetune_runs_the_papers_recipe_at_a_new_resolution_and_class_count(
    timm_checkpoint, tmp_path
):
    path, _ = timm_checkpoint
    over = {"init_from": str(path), "data": "synthetic", "img_size": 48, "steps": 6,
            "model_args": HEADS}  # fmt: skip
    over.update(batch_size=16, accum_steps=2, precision="fp32", out=str(tmp_path / "ft"))
    cfg = build_config("finetune_paper", over)
    assert cfg.optimizer == "sgd" and cfg.weight_decay == 0.0 and cfg.clip_grad == 1.0
    result = fit(cfg)
    import vitlab

    tuned = vitlab.load_checkpoint(result.run_dir / "last.safetensors")
    assert tuned.cfg.num_classes == 4 and tuned.cfg.img_size == 48
    assert torch.count_nonzero(tuned.head.weight) > 0  # the new head learned
    assert result.report["steps"] == 6 and result.report["n"] == 64


def test_dont_load_in_the_train_config_keeps_those_parameters_initialised(timm_checkpoint):
    """`--set dont_load=[pos_embed]`: fine-tuning starts from the checkpoint except there."""
    path, saved = timm_checkpoint
    cfg = build_config("finetune_paper", {"init_from": str(path), "data": "synthetic",
                                          "img_size": 32, "dont_load": ["pos_embed"],
                                          "model_args": HEADS})  # fmt: skip
    model = model_for_data(cfg, load_data("synthetic"))
    assert not torch.equal(model.pos_embed, saved["pos_embed"])
    assert torch.equal(model.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert build_config(None, {"dont_load": ["head\\..*"]}).dont_load == ("head\\..*",)
