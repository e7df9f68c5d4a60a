"""The check every ONNX export passes before it is kept: ONNX Runtime against an fp64 PyTorch
run, with PyTorch fp32's own error as the yardstick. A correct hybrid whose large logits put
fp32 rounding over 1e-4 is kept; a wrong weight or operator is refused by a wide margin."""

import copy
import re

import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError
from vitlab.models.config import replace
from vitlab.weights.onnx import check_export, export_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _hybrid(name: str, scale: float, head: float, **kw) -> torch.nn.Module:
    """A hybrid at 64 px with every parameter perturbed (biases non-zero) and a head of `head`
    standard deviation, which sets the logits' scale."""
    torch.manual_seed(0)
    if name == "r50":
        cfg = vitlab.get_config("r50_vit_b16", embed_dim=32, depth=1, num_heads=2, mlp_dim=64,
                                img_size=64, num_classes=5, **kw)  # fmt: skip
        model = vitlab.create_model(replace(cfg, backbone=replace(cfg.backbone, layers=(1, 1, 1))))
    else:
        model = vitlab.create_model("r11_vit_micro", img_size=64, num_classes=10, **kw)
    model = perturb_(model, scale).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, head)
    return model


@pytest.mark.parametrize(
    ("name", "dynamic"), [("r11", False), ("r11", True), ("r50", False)], ids=str
)
def test_a_correct_hybrid_export_with_large_logits_is_kept(name, dynamic, tmp_path):
    """Logits of tens put PyTorch fp32 and ONNX Runtime 1e-4 to 6e-4 apart here (both that far
    from fp64): the fixed 1e-4 threshold refused these correct graphs."""
    model = _hybrid(name, 0.3, 2.0)
    report = export_onnx(model, tmp_path / "m.onnx", dynamic_img_size=dynamic)
    assert (tmp_path / "m.onnx").is_file() and len(report.checked_sizes) == (3 if dynamic else 1)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        want = model(x)
    got = vitlab.load_checkpoint(tmp_path / "m.onnx")(x)
    assert (got - want).abs().max() < 3e-5 * want.abs().max()  # fp32 rounding at their scale


def _wrong_weight(model):
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.mul_(1.001)
    return model


def _wrong_bias(model):
    with torch.no_grad():
        model.head.bias[3] += 1e-3
    return model


def _wrong_op(model):
    wrong = _hybrid("r11", 0.1, 0.5, act="gelu_tanh")  # tanh GELU where the graph has erf
    wrong.load_state_dict(model.state_dict())
    return wrong


@pytest.mark.parametrize("wrong", [_wrong_weight, _wrong_bias, _wrong_op], ids=lambda f: f.__name__)
def test_a_graph_that_is_not_the_model_is_refused_by_a_wide_margin(wrong, tmp_path):
    """The graph of one model checked against another that differs by a 0.1% weight, a 1e-3
    bias or the GELU's formula: refused at 10 or more times what fp32 rounding allows."""
    model = _hybrid("r11", 0.1, 0.5)
    export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(CheckpointError, match="more than fp32 rounding") as e:
        check_export(wrong(copy.deepcopy(model)), tmp_path / "m.onnx", False)
    found = re.search(r"is ([0-9.e+-]+) from an fp64.*allowed: ([0-9.e+-]+)\)", str(e.value))
    off, allowed = map(float, found.groups())
    assert off > 10 * allowed, str(e.value)
