"""Pre-training without labels (vitlab.train.selfsup, `vitlab pretrain`): the objectives as
their papers define them (masking statistics, targets), losses that fall, checkpoints that
fine-tune, a resumable run, flat folders of images, and one-line refusals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vitlab
from tests.train.common import small_cfg
from vitlab.data.datasets import DatasetError
from vitlab.errors import ConfigError
from vitlab.train.run import fit
from vitlab.train.selfsup import (
    MaskedAutoencoder,
    MaskedPatchPrediction,
    build_pretrainer,
    mean_colour_bins,
    patchify,
    unpatchify,
)


def _encoder(**kw):
    return vitlab.create_model("vit_test", num_classes=0, patch_size=4, img_size=16, **kw)


# ------------------------------------------------------------------------ the definitions
def test_mpp_corrupts_half_the_patches_80_10_10():
    mpp = MaskedPatchPrediction(_encoder(), mask_ratio=0.5)
    torch.manual_seed(0)
    chosen, how = mpp.corrupt(64, 2000, torch.device("cpu"))
    assert (chosen.sum(1) == 32).all()  # exactly half of every image's patches
    picked = how[chosen]
    shares = torch.bincount(picked, minlength=3).float() / len(picked)
    assert torch.allclose(shares, torch.tensor([0.8, 0.1, 0.1]), atol=0.01)


def test_mpp_replaces_the_chosen_embeddings_as_drawn(monkeypatch):
    """The forward pass puts the [mask] embedding, another patch or the patch itself exactly
    where `corrupt` said, and predicts only the corrupted patches."""
    enc = _encoder()
    mpp = MaskedPatchPrediction(enc).eval()
    chosen = torch.tensor([[True, True, True, False] + [False] * 12])
    how = torch.tensor([[0, 1, 2, 0] + [0] * 12])
    monkeypatch.setattr(mpp, "corrupt", lambda n, b, d: (chosen, how))
    seen = {}
    monkeypatch.setattr(enc, "forward_tokens", lambda x: seen.setdefault("x", x) * 0 + x)
    x = torch.randn(1, 3, 16, 16)
    mpp(x)
    tokens, pos, _ = enc.embed_patches(x)
    got = seen["x"][:, 1:] - pos  # the patch tokens before position embeddings
    assert torch.allclose(got[0, 0], mpp.mpp.mask_token[0, 0], atol=1e-6)
    assert torch.allclose(got[0, 2], tokens[0, 2], atol=1e-6)  # kept as it was
    assert torch.allclose(got[0, 3:], tokens[0, 3:], atol=1e-6)  # not chosen
    assert any(torch.allclose(got[0, 1], tokens[0, j], atol=1e-6) for j in range(16))


def test_mpp_targets_are_the_3_bit_mean_colours():
    """A 2x2-cell image with known colours: each cell's mean, 3 bits per channel, red first."""
    img = torch.zeros(1, 3, 8, 8)
    img[:, :, :4, :4] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # red: (7, 0, 0)
    img[:, :, :4, 4:] = torch.tensor([0.3, 0.6, 0.9]).view(1, 3, 1, 1)  # (2, 4, 7)
    img[:, 0, 4:, :4] = torch.tensor([0.0, 1.0]).repeat(2)[None].T.repeat(1, 4)[None]  # mean .5
    img[:, :, 4:, 4:] = 0.124  # just under 1/8 in every channel: (0, 0, 0)
    bins = mean_colour_bins(img, 4)
    expected = [7 * 64, 2 * 64 + 4 * 8 + 7, 4 * 64, 0]
    assert bins.tolist() == [expected]
    grey = mean_colour_bins(img[:, :1], 4)  # one channel: 8 classes
    assert grey.tolist() == [[7, 2, 4, 0]]


def test_mae_drops_three_quarters_and_scores_only_those():
    mae = MaskedAutoencoder(_encoder(), mask_ratio=0.75)
    torch.manual_seed(0)
    pred, dropped = mae.reconstruct(torch.randn(50, 3, 16, 16))
    assert pred.shape == (50, 16, 4 * 4 * 3)
    assert (dropped.sum(1) == 12).all()  # 75% of 16
    assert dropped.float().mean(0).min() > 0.2 and dropped.float().mean(0).max() < 1.0


def test_mae_encoder_sees_only_the_visible_patches(monkeypatch):
    enc = _encoder()
    mae = MaskedAutoencoder(enc)
    widths = []
    real = enc.forward_tokens
    monkeypatch.setattr(enc, "forward_tokens", lambda x: widths.append(x.shape[1]) or real(x))
    mae(torch.randn(2, 3, 16, 16))
    assert widths == [1 + 4]  # the class token and 25% of 16 patches


def test_patchify_round_trips_and_normalised_targets_are_per_patch():
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(x, 4), 4, (4, 4), 3), x)
    t = MaskedAutoencoder(_encoder()).targets(x)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 16), atol=1e-3)


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_the_loss_falls_within_a_few_dozen_steps(objective):
    """Trained on one fixed batch, each objective's loss falls well below an untrained one's."""
    torch.manual_seed(0)
    model = build_pretrainer(_encoder(), objective)
    x = vitlab.data.datasets.synthetic_images(64).images.float() / 127.5 - 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss():
        torch.manual_seed(1)  # the same masks before and after
        with torch.no_grad():
            return float(model(x))

    before = loss()
    for _ in range(40):
        opt.zero_grad()
        model(x).backward()
        opt.step()
    assert loss() < 0.8 * before


# ------------------------------------------------------------------------------ runs
PRE = {"val_split": 0.25, "epochs": 2, "batch_size": 32}


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_pretrain_then_finetune_loads_every_encoder_tensor_and_a_fresh_head(tmp_path, objective):
    pre = fit(small_cfg(tmp_path / "pre", objective=objective, **PRE))
    assert pre.report["objective"] == objective and pre.report["top1"] is None
    saved = load_file(pre.run_dir / "last.safetensors")
    prefix = f"{objective}."
    assert any(k.startswith(prefix) for k in saved)  # kept for resuming pre-training
    assert not any(k.startswith("head.") for k in saved)
    ft = fit(small_cfg(tmp_path / "ft", init_from=str(pre.run_dir / "last.safetensors"),
                       epochs=1, lr=1e-12, warmup_steps=0))  # fmt: skip
    tuned = load_file(ft.run_dir / "last.safetensors")
    encoder = {k: v for k, v in saved.items() if not k.startswith(prefix)}
    assert all(torch.allclose(tuned[k], v, atol=1e-6) for k, v in encoder.items())
    assert tuned["head.weight"].shape[0] == 4 and not any(k.startswith(prefix) for k in tuned)


def test_loading_a_pretrained_checkpoint_says_what_it_dropped(tmp_path, caplog):
    pre = fit(small_cfg(tmp_path, objective="mae", **PRE))
    with caplog.at_level("INFO", logger="vitlab"):
        model = vitlab.load_checkpoint(pre.run_dir / "last.safetensors", num_classes=3)
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(said) == 1 and "the MAE decoder" in said[0]
    assert model.cfg.num_classes == 3 and float(model.head.weight.detach().abs().sum()) == 0.0
    out = vitlab.save_checkpoint(model, tmp_path / "hf", format="hf")  # export: encoder only
    assert (out / "config.json").is_file()


def test_pretraining_writes_curves_and_mae_pictures_and_stops_on_validation_loss(tmp_path):
    r = fit(small_cfg(tmp_path, objective="mae", patience=1, **{**PRE, "epochs": 4}))
    files = {p.name for p in r.run_dir.iterdir()}
    assert {"curves.png", "summary.csv", "metrics.jsonl", "best.safetensors"} <= files
    assert sorted(p.name for p in (r.run_dir / "reconstructions").iterdir())[0] == "epoch_001.png"
    rows = [json.loads(line) for line in (r.run_dir / "metrics.jsonl").open()]
    assert all("val_loss" in h and "val_acc" not in h and "train_acc" not in h for h in rows)
    assert r.report["best"]["val_loss"] == min(h["val_loss"] for h in rows)


def test_pretraining_reads_a_flat_folder_of_images(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(24):
        pixels = torch.randint(0, 255, (20, 20, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    cfg = small_cfg(tmp_path, data=f"imagefolder:{folder}", objective="mpp", **PRE)
    r = fit(cfg).report
    assert r["train_images"] == 18 and r["val_loss"] > 0
    with pytest.raises(DatasetError, match="flat folder of images without labels is for `vitlab"):
        fit(small_cfg(tmp_path / "sup", data=f"imagefolder:{folder}"))


@pytest.mark.parametrize(
    ("kw", "said"),
    [
        ({"model": "bit_r50x1", "model_args": {}}, "is a ResNet: choose a ViT"),
        ({"mask_ratio": 0.01}, "masks at least one patch"),
    ],
)
def test_an_objective_that_does_not_fit_the_model_is_refused_first(tmp_path, kw, said):
    with pytest.raises(ConfigError, match=said):
        fit(small_cfg(tmp_path, objective="mae", **kw))
    assert not (tmp_path / "run").exists()  # before anything ran


def test_the_cli_refuses_mpp_with_patches_that_do_not_tile_the_image(tmp_path):
    cmd = [sys.executable, "-m", "vitlab", "pretrain", "--objective", "mpp", "--model",
           "vit_test", "--img-size", "18", "--out", str(tmp_path / "run")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "not divisible by patch_size" in res.stderr.strip().splitlines()[-1]


def _pretrain_cmd(out, *extra):
    return [sys.executable, "-m", "vitlab", "-q", "pretrain", "--objective", "mae", "--model",
            "vit_test", "--data", "synthetic", "--img-size", "16", "--epochs", "6",
            "--batch-size", "8", "--out", str(out), "--set", "model_args.patch_size=4",
            "--set", "threads=1", "--set", "ckpt_every=5", "--set", "val_split=0.25",
            "--set", "hflip=0.5", "--set", "deterministic=true", *extra]  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_pretraining_then_resume_continues(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_pretrain_cmd(tmp_path / "ref"), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(_pretrain_cmd(out), env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "last.state.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "last.state.pt", weights_only=True)["step"]
    assert 0 < killed_at < 6 * 24
    res = subprocess.run(_pretrain_cmd(out, "--resume"), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a, b = load_file(tmp_path / "ref" / "last.safetensors"), load_file(out / "last.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("mae.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
