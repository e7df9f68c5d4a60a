"""Analytic FLOP counts (vitlab.models.flops) against torch's own FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vitlab
from vitlab.models.flops import flops_per_image


def _counted_flops(model, x, train):
    """torch's own count; the explicit attention path, as the counter skips CPU fused SDPA."""
    with FlopCounterMode(display=False) as fc:
        if train:
            model.forward_intermediates(x, return_attn=True)["logits"].sum().backward()
        else:
            with torch.no_grad():
                model.forward_intermediates(x)
    return fc.get_total_flops()


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("vit_test", {}),
        ("vit_test", {"pool": "gap"}),
        ("vit_micro_p4", {"img_size": 28, "in_chans": 1, "depth": 2}),
        ("vit_s16", {"depth": 1, "img_size": 64}),
    ],
)
def test_flops_per_image_match_torch_flop_counter(name, kw, mode):
    model = vitlab.create_model(name, **kw)
    size = model.cfg.img_size
    x = torch.randn(1, model.cfg.in_chans, size, size)
    counted = _counted_flops(model.train(mode == "train"), x, mode == "train")
    assert flops_per_image(model.cfg, mode) == counted
