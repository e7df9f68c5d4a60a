import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from vitlab.models.registry import create_model
from vitlab.train.config import TrainConfig
from vitlab.train.optim import build_ema, build_optimizer, build_scheduler, param_groups


def test_no_weight_decay_on_biases_norms_pos_embed_and_cls_token():
    model = create_model("vit_test")
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    for n, _ in model.named_parameters():
        expect = n.endswith(".bias") or "norm" in n or n in ("pos_embed", "cls_token")
        assert (n in exempt) == expect, n
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_warmup_then_decay_matches_torch_schedulers(schedule):
    total, warm, lr = 40, 8, 0.1
    cfg = TrainConfig(lr=lr, warmup_steps=warm, schedule=schedule, optimizer="sgd")
    p = torch.nn.Parameter(torch.zeros(2))
    ours = torch.optim.SGD([p], lr=lr)
    sched = build_scheduler(ours, cfg, steps_per_epoch=10, total=total)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    first = LinearLR(ref_opt, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1)
    if schedule == "cosine":
        decay = CosineAnnealingLR(ref_opt, T_max=total - warm)
    else:
        decay = LinearLR(ref_opt, 1.0, 0.0, total_iters=total - warm)
    ref = SequentialLR(ref_opt, [first, decay], milestones=[warm])
    for _ in range(total):
        assert math.isclose(
            ours.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"], rel_tol=1e-6, abs_tol=1e-12
        )
        ours.step()
        sched.step()
        ref_opt.step()
        ref.step()


def test_ema_is_the_exponential_average_of_the_weights():
    model = torch.nn.Linear(3, 2)
    ema = build_ema(model, 0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update_parameters(model)  # the first update copies
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update_parameters(model)
        for k, v in model.state_dict().items():
            expected[k] = 0.9 * expected[k] + 0.1 * v
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k])


def test_optimizers_follow_the_config():
    model = create_model("vit_test")
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", betas=(0.9, 0.95)))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", momentum=0.9), fused=False)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
