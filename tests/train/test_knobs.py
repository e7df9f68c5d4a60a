"""Every TrainConfig knob that changes what training computes, checked by its effect: each test
fails when the knob is ignored, and compares with a computation of its own (torch's
cross_entropy, the SGD and AdamW update rules, the EMA recursion in closed form, the paper's
schedule written out from Appendix B.1), never with numbers typed in."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import perturb_
from vitlab.data.datasets import load_data
from vitlab.errors import ConfigError
from vitlab.train.config import TrainConfig
from vitlab.train.distributed import DistInfo
from vitlab.train.loop import StepContext, train_step
from vitlab.train.run import build_state, model_for_data

SMALL = {"patch_size": 4}  # vit_test at 16 px: 16 patches, D 32, 2 blocks
# knobs off unless a test turns them on; no dropout, no batch statistics
BASE = dict(model="vit_test", model_args=SMALL, img_size=16, data="synthetic", batch_size=8,
            optimizer="sgd", lr=0.1, weight_decay=0.0, clip_grad=None,
            schedule="constant")  # fmt: skip


@functools.cache
def _data():
    return load_data("synthetic")


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    train = _data().train
    return train.images[:n], train.labels[:n]


def _setup(total: int = 10, spe: int = 10, **kw) -> tuple[TrainConfig, object, StepContext]:
    """A config, the TrainState `fit` would build for it, and the step context."""
    cfg = TrainConfig(**{**BASE, **kw})
    model = perturb_(model_for_data(cfg, _data()), 0.1)  # no zero class token or head
    state = build_state(cfg, model, DistInfo(), total, spe)
    c = model.cfg
    ctx = StepContext(cfg, DistInfo(), tuple(c.mean), tuple(c.std), _data().num_classes)
    return cfg, state, ctx


def _normalized(x: torch.Tensor, model) -> torch.Tensor:
    """The model's input for uint8 images, written out: (x / 255 - mean) / std per channel."""
    mean = torch.tensor(model.cfg.mean).view(1, -1, 1, 1)  # (1, C, 1, 1)
    std = torch.tensor(model.cfg.std).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------- label_smoothing
def test_label_smoothing_is_the_loss_train_step_reports_and_descends():
    """The reported loss is torch's smoothed cross-entropy of the logits, and the SGD step is
    -lr times the gradient of that loss (first momentum step: the buffer is the gradient)."""
    ls = 0.3
    cfg, state, ctx = _setup(label_smoothing=ls)
    x, y = _batch()
    model = state.model
    ref = model_for_data(cfg, _data())
    ref.load_state_dict(model.state_dict())
    logits = []
    model.register_forward_hook(lambda m, args, out: logits.append(out.detach().float()))
    loss, _ = train_step(state, x, y, ctx)

    seen = torch.cat(logits)
    assert math.isclose(loss, float(F.cross_entropy(seen, y, label_smoothing=ls)), rel_tol=1e-5)
    assert not math.isclose(loss, float(F.cross_entropy(seen, y)), rel_tol=1e-2)
    ref.train()
    F.cross_entropy(ref(_normalized(x, ref)), y, label_smoothing=ls).backward()
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        expected = p.detach() - cfg.lr * p.grad
        torch.testing.assert_close(q.detach(), expected, atol=1e-6, rtol=0, msg=name)


# -------------------------------------------------------------------- weight-decay exemptions
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_spares_class_token_position_embeddings_biases_and_norms(optimizer):
    """With zero gradients a step is weight decay alone: AdamW and SGD both scale a decayed
    tensor by (1 - lr * wd), and leave an exempt one (paper Appendix B.1, timm's rule) as is."""
    lr, wd = 0.1, 0.5
    _, state, _ = _setup(optimizer=optimizer, lr=lr, weight_decay=wd)
    model = state.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert {"cls_token", "pos_embed"} <= before.keys()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    state.optimizer.step()
    decayed = []
    for n, p in model.named_parameters():
        exempt = n.endswith(".bias") or "norm" in n or n in ("cls_token", "pos_embed")
        expected = before[n] if exempt else before[n] * (1 - lr * wd)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=n)
        decayed += [] if exempt else [n]
    assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed


# ------------------------------------------------------------------------------ clip_grad
def _grads_at_step(**kw) -> torch.Tensor:
    """All gradients (flattened, concatenated) as the optimiser sees them in one train_step."""
    _, state, ctx = _setup(**kw)
    seen = []

    def record(opt, args, kwargs):
        ps = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.cat([p.grad.detach().flatten() for p in ps]))

    state.optimizer.register_step_pre_hook(record)
    train_step(state, *_batch(), ctx)
    assert len(seen) == 1
    return seen[0]


def test_clip_grad_scales_the_global_gradient_norm_down_to_clip_grad():
    raw = _grads_at_step(clip_grad=None)
    norm = float(torch.linalg.vector_norm(raw))
    clipped = _grads_at_step(clip_grad=norm / 4)
    assert math.isclose(float(torch.linalg.vector_norm(clipped)), norm / 4, rel_tol=1e-4)
    torch.testing.assert_close(clipped, raw / 4, rtol=1e-4, atol=1e-9)  # one global factor
    torch.testing.assert_close(_grads_at_step(clip_grad=norm * 4), raw)  # a norm below: as is


# ---------------------------------------------------------------------------- accum_steps
def test_accum_steps_splits_the_batch_into_micro_batches_summing_to_the_one_batch_step():
    x, y = _batch(8)
    results = {}
    for accum in (1, 2, 4):
        # clip_grad off: clipping to a norm would hide a gradient scaled by accum_steps
        _, state, ctx = _setup(accum_steps=accum, weight_decay=0.05)
        sizes: list[int] = []
        state.model.register_forward_pre_hook(lambda m, args, seen=sizes: seen.append(len(args[0])))
        loss, _ = train_step(state, x, y, ctx)
        results[accum] = sizes, loss, _weights(state.model)
    for accum, (sizes, loss, weights) in results.items():
        assert sizes == [8 // accum] * accum
        assert math.isclose(loss, results[1][1], rel_tol=1e-5)
        for k, v in results[1][2].items():
            torch.testing.assert_close(weights[k], v, atol=1e-6, rtol=1e-5, msg=k)


# ------------------------------------------------------------------------- mixup and cutmix
def _mix_weights(seen: torch.Tensor, plain: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Which mix made the images `seen` from the batch `plain`, and its (B, B) weights W."""
    same_pixel = (seen[:, None] == plain[None]).all(2)  # (B, B, H, W): seen i's pixel is j's
    if same_pixel.any(1).all():  # cutmix: every pixel comes from some image of the batch
        return "cutmix", same_pixel.double().mean((2, 3))
    flat, mixed = plain.flatten(1).double(), seen.flatten(1).double()  # (B, C*H*W)
    W = torch.linalg.lstsq(flat.T, mixed.T).solution.T  # mixup: solve W @ plain = seen
    torch.testing.assert_close(W @ flat, mixed)  # a mix of the batch, nothing else
    return "mixup", W


@pytest.mark.parametrize("knob", [{"mixup": 0.8}, {"cutmix": 1.0}, {"mixup": 0.8, "cutmix": 1.0}])
def test_mixup_and_cutmix_mix_the_images_the_model_sees_and_the_targets_alike(knob, monkeypatch):
    """Each image the model sees is a mix of the batch's images, by weights W (mixup: a linear
    combination, solved for; cutmix: the share of pixels taken from each image), and the loss's
    targets are the same mix of the one-hot labels: W @ one_hot(y). With both knobs on, each
    batch gets one of the two."""
    _, state, ctx = _setup(**knob)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)  # no two pixels alike
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    inputs, targets = [], []
    state.model.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    cross_entropy = F.cross_entropy

    def spy(logits, target, *a, **k):
        targets.append(target.detach())
        return cross_entropy(logits, target, *a, **k)

    monkeypatch.setattr(F, "cross_entropy", spy)
    kinds = set()
    for _ in range(1 if len(knob) == 1 else 6):
        train_step(state, x, y, ctx)
        kind, W = _mix_weights(inputs[-1], _normalized(x, state.model))
        kinds.add(kind)
        assert (W - torch.eye(8, dtype=W.dtype)).abs().max() > 0.05, "the images were not mixed"
        target = targets[-1]
        assert target.shape == (8, 4) and target.is_floating_point()
        onehot = F.one_hot(y, 4).double()
        torch.testing.assert_close(target.double(), W @ onehot, atol=1e-5, rtol=0)
    assert kinds == set(knob)


# ------------------------------------------------------------------------------- ema_decay
def test_ema_weights_are_the_exponential_average_of_the_trained_weights():
    """After N steps the average is d^(N-1) w_1 + (1-d) sum_k>1 d^(N-k) w_k (the first update
    copies the weights), where w_k are the live weights after step k."""
    d, n = 0.6, 4
    _, state, ctx = _setup(ema_decay=d)
    x, y = _batch()
    live = []
    for _ in range(n):
        train_step(state, x, y, ctx)
        live.append(_weights(state.model))
    ema = state.ema.module.state_dict()
    assert state.eval_model is state.ema.module
    for k, v in ema.items():
        expected = d ** (n - 1) * live[0][k]
        expected += sum((1 - d) * d ** (n - 1 - i) * live[i][k] for i in range(1, n))
        torch.testing.assert_close(v, expected, atol=1e-6, rtol=1e-5, msg=k)
    w = "blocks.0.attn.qkv.weight"
    assert (ema[w] - live[-1][w]).abs().max() > 1e-3  # an average, not the live weights


# ------------------------------------------------------------------ warmup and the schedule
def _paper_lr(step: int, peak: float, floor: float, warm: int, total: int, shape: str) -> float:
    """The learning rate of optimiser step `step` (0-based), Appendix B.1: linear warmup to
    `peak` over `warm` steps (the first step at peak / warm), then cosine (or linear) decay that
    reaches `floor` at `total`."""
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / (total - warm)
    fall = (1 + math.cos(math.pi * t)) / 2 if shape == "cosine" else 1 - t
    return floor + (peak - floor) * fall


def _lrs_used(state, steps: int, step) -> list[list[float]]:
    """The lr of every parameter group at each of `steps` optimiser steps taken by `step()`."""
    used = []
    state.optimizer.register_step_pre_hook(
        lambda opt, a, k: used.append([g["lr"] for g in opt.param_groups])
    )
    for _ in range(steps):
        step()
    return used


@pytest.mark.parametrize(
    "knobs, warm",
    [
        ({"warmup_steps": 4}, 4),
        ({"warmup_epochs": 0.8}, 4),  # 5 steps an epoch
        ({"warmup_epochs": 1.4, "schedule": "linear"}, 7),
        ({"warmup_steps": 30}, 8),  # at most half the run
    ],
)
def test_warmup_then_decay_to_min_lr_is_the_lr_of_every_step(knobs, warm):
    total, spe, lr, min_lr = 16, 5, 0.02, 0.002
    knobs = {"lr": lr, "min_lr": min_lr, "schedule": "cosine", **knobs}
    cfg, state, _ = _setup(total, spe, **knobs)

    def step():  # what train_step does after the backward passes, without them
        state.optimizer.step()
        state.scheduler.step()

    for i, lrs in enumerate(_lrs_used(state, total, step)):
        expected = _paper_lr(i, lr, min_lr, warm, total, cfg.schedule)
        assert lrs == pytest.approx([expected] * len(lrs), rel=1e-6), i
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(min_lr, rel=1e-6)  # the end


def test_train_step_steps_at_the_scheduled_lr_and_moves_the_schedule_on():
    total, lr, min_lr = 6, 0.02, 0.002
    _, state, ctx = _setup(total, 3, lr=lr, min_lr=min_lr, schedule="cosine", warmup_steps=2)
    x, y = _batch()
    used = _lrs_used(state, total, lambda: train_step(state, x, y, ctx))
    expected = [_paper_lr(i, lr, min_lr, 2, total, "cosine") for i in range(total)]
    assert [g[0] for g in used] == pytest.approx(expected, rel=1e-6)
    assert state.step == total


# --------------------------------------------------------------- drop_path_rate (model_args)
def _model(**model_args):
    cfg = TrainConfig(**{**BASE, "model_args": {**SMALL, **model_args}})
    return model_for_data(cfg, _data())


def test_drop_path_rate_drops_residual_branches_per_sample_growing_linearly_with_depth():
    """Stochastic depth (Huang et al. 2016, as timm): block i of L drops each of its two
    residual branches per sample with p_i = rate * i / (L - 1), so a sample passes the block
    untouched with probability p_i ** 2; in eval mode nothing is dropped."""
    rate, depth = 0.6, 4
    model = _model(depth=depth, drop_path_rate=rate).train()
    tokens = torch.randn(4000, 2, 32)  # (B, N, D): many samples, few tokens
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            untouched = (block(tokens) == tokens).all(-1).all(-1).double().mean()
            p = rate * i / (depth - 1)
            assert abs(float(untouched) - p**2) < 0.03, (i, float(untouched), p**2)


def test_drop_path_is_random_in_training_and_off_in_eval():
    model = _model(drop_path_rate=0.5)
    plain = _model(drop_path_rate=0.0)
    plain.load_state_dict(model.state_dict())
    x = _normalized(_batch(16)[0], model)
    with torch.no_grad():
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
        assert (a - b).abs().amax(-1).gt(1e-4).sum() >= 2  # some samples differ
        model.eval()
        torch.testing.assert_close(model(x), plain.eval()(x), rtol=0, atol=0)


# ------------------------------------------------------------------------ optimizer: muon
def _newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's orthogonalisation written out in float64 (Jordan et al. 2024): the gradient over
    its Frobenius norm, then X <- aX + (bA + cA^2)X with A = XX^T, on the wide orientation."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double() / g.double().norm()
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def test_muon_orthogonalises_the_blocks_matrices_and_adamw_steps_the_rest():
    """One step of optimizer=muon from fixed gradients: every 2-D weight of a transformer block
    moves by -lr * 0.2 * sqrt(max(rows, cols)) * NS(Nesterov momentum of the gradient) after
    decoupled weight decay; every other tensor exactly as torch's AdamW moves it."""
    lr, wd, m = 0.01, 0.1, 0.95
    _, state, _ = _setup(optimizer="muon", lr=lr, weight_decay=wd)
    model = state.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    ref = {n: torch.nn.Parameter(v.clone()) for n, v in before.items()}
    decay = [ref[n] for n in ref if ref[n].ndim >= 2 and n not in ("cls_token", "pos_embed")]
    rest = [p for p in ref.values() if all(p is not q for q in decay)]
    adamw = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
        ref[n].grad = grads[n].clone()
    state.optimizer.step()
    adamw.step()
    matrices = [n for n in before if n.startswith("blocks.") and before[n].ndim == 2]
    assert "blocks.0.attn.qkv.weight" in matrices and "blocks.1.mlp.fc2.weight" in matrices
    for n, p in model.named_parameters():
        if n in matrices:
            rows, cols = p.shape
            update = _newton_schulz(grads[n] * (1 - m * m))  # Nesterov's first step
            expected = (
                before[n].double() * (1 - lr * wd) - lr * 0.2 * max(rows, cols) ** 0.5 * update
            )
            err = (p.detach().double() - expected).norm() / (expected - before[n].double()).norm()
            assert err < 0.03, (n, float(err))  # the iteration runs in bf16
        else:
            torch.testing.assert_close(p.detach(), ref[n].detach(), rtol=1e-6, atol=1e-7, msg=n)


def test_muon_shares_the_schedule_and_resumes_from_its_state(tmp_path):
    """The schedule sets both halves' rate; the state saved in a checkpoint restores both."""
    _, state, _ = _setup(optimizer="muon", lr=0.01, warmup_steps=4, schedule="cosine", total=8)
    opt = state.optimizer
    assert {g["lr"] for g in opt.param_groups} == {0.01 / 4}
    for p in state.model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    state.scheduler.step()
    assert {g["lr"] for g in opt.param_groups} == {0.01 * 2 / 4}
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    _, other, _ = _setup(optimizer="muon", lr=0.01, warmup_steps=4, schedule="cosine", total=8)
    other.optimizer.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    saved, restored = opt.state_dict(), other.optimizer.state_dict()
    for half in ("muon", "adamw"):
        assert saved[half]["state"].keys() == restored[half]["state"].keys()
        for k, v in saved[half]["state"].items():
            for name, t in v.items():
                torch.testing.assert_close(restored[half]["state"][k][name], t, msg=name)


def test_muon_on_a_model_without_transformer_blocks_is_refused():
    with pytest.raises(ConfigError, match="optimizer=muon .* has none: use optimizer=adamw"):
        _setup(optimizer="muon", model="bit_r50x1",
               model_args={"layers": [1, 1, 1, 1], "stem_width": 8, "gn_groups": 4})  # fmt: skip
