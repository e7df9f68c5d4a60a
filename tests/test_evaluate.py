"""Evaluation (vitlab.evaluate): the counts against a direct computation, padding left out,
process sums through `reduce`, and `vitlab eval`'s library side with its report."""

import json

import pytest
import torch
import torch.nn.functional as F

import vitlab
from tests.conftest import perturb_
from vitlab.data.datasets import load_data
from vitlab.evaluate import EvalContext, evaluate, evaluate_checkpoint


class _Fixed(torch.nn.Module):
    """Logits given per batch, to compare evaluate() with a direct computation."""

    def __init__(self, logits):
        super().__init__()
        self.logits = list(logits)

    def forward(self, x):
        return self.logits.pop(0)


def test_counts_equal_a_direct_computation_and_padding_is_left_out():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 7, generator=g) for _ in range(3)]
    labels = [torch.randint(0, 7, (4,), generator=g) for _ in range(3)]
    labels[2][-1] = -1  # padding of the last process's shard
    batches = [(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), y, 1) for y in labels]
    ctx = EvalContext(torch.device("cpu"), (0.5,), (0.5,), 7, progress=False)
    res = evaluate(_Fixed(logits), batches, ctx)
    x, y = torch.cat(logits)[:-1], torch.cat(labels)[:-1]
    assert res.n == 11 and res.skipped == 3
    assert res.top1 == pytest.approx(float((x.argmax(1) == y).float().mean()))
    assert res.top5 == pytest.approx(float((x.topk(5).indices == y[:, None]).any(1).float().mean()))
    assert res.loss == pytest.approx(float(F.cross_entropy(x, y)), rel=1e-6)
    assert int(res.confusion.sum()) == 11 and int(res.confusion[y[0], x[0].argmax()]) >= 1


def test_reduce_sums_the_counts_of_every_process():
    seen = []
    ctx = EvalContext(torch.device("cpu"), (0.5,), (0.5,), 3, progress=False,
                      reduce=lambda t: seen.append(t.clone()) or t * 2)  # fmt: skip
    batches = [(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), 0)]
    res = evaluate(_Fixed([torch.eye(3)[:2]]), batches, ctx)
    assert len(seen) == 2 and res.n == 4  # two "processes" of 2 images each
    assert res.top1 == 1.0


def test_evaluate_checkpoint_writes_the_report_and_refuses_other_classes(tmp_path):
    model = perturb_(vitlab.create_model("vit_test", num_classes=4, img_size=16, patch_size=4))
    report = evaluate_checkpoint(model, "synthetic", out=tmp_path, name="m")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["n"] == len(load_data("synthetic").test) == report["n"]
    assert (tmp_path / "confusion.png").stat().st_size > 0
    wrong = vitlab.create_model("vit_test", num_classes=10)
    with pytest.raises(vitlab.ConfigError, match="10 classes but synthetic has 4"):
        evaluate_checkpoint(wrong, "synthetic")


class _Mirrored(torch.nn.Module):
    """A model and, by hand, its test-time flip: the mean logits of each image and its mirror."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return (self.model(x) + self.model(torch.flip(x, dims=[3]))) / 2


def test_test_time_flips_average_each_image_with_its_mirror(tmp_path):
    from vitlab.evaluate import format_report

    model = perturb_(vitlab.create_model("vit_test", num_classes=4, img_size=16, patch_size=4),
                     0.3).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (8, 3, 16, 16), generator=g, dtype=torch.uint8),
                torch.randint(0, 4, (8,), generator=g), 0) for _ in range(3)]  # fmt: skip
    ctx = EvalContext(torch.device("cpu"), (0.5,) * 3, (0.5,) * 3, 4, progress=False)
    plain = evaluate(model, batches, ctx)
    by_hand = evaluate(_Mirrored(model), batches, ctx)
    ctx.flip = True
    flipped = evaluate(model, batches, ctx)
    assert flipped.loss == pytest.approx(by_hand.loss, rel=1e-6) != plain.loss
    assert torch.equal(flipped.confusion, by_hand.confusion)
    report = evaluate_checkpoint(model, "synthetic", flip=True, out=tmp_path)
    assert report["flip"] and not evaluate_checkpoint(model, "synthetic")["flip"]
    assert json.loads((tmp_path / "report.json").read_text())["flip"] is True
    assert "test-time flip" in format_report(report)


def test_other_class_names_and_channels_are_noted(tmp_path, caplog):
    """A digits checkpoint on another 10-class set used to report its accuracy without a word
    about the classes being different ones."""
    digits = vitlab.create_model("vit_test", in_chans=1, img_size=16, patch_size=4,
                                 num_classes=4, class_names=("0", "1", "2", "3"))  # fmt: skip
    with caplog.at_level("WARNING", logger="vitlab"):
        evaluate_checkpoint(digits, "synthetic", name="digits.safetensors")
    text = caplog.text
    assert "are not synthetic's (pattern 0" in text and "takes 1 channel(s)" in text


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A ViT trained on digits for a few seconds: confident enough that bf16 rounding rarely
    decides a prediction."""
    from vitlab.train.config import TrainConfig
    from vitlab.train.run import fit

    out = tmp_path_factory.mktemp("digits") / "run"
    cfg = TrainConfig(model="vit_test", model_args={"patch_size": 4}, img_size=8, data="digits",
                      epochs=8, batch_size=64, lr=3e-3, warmup_steps=5, out=str(out))  # fmt: skip
    fit(cfg)
    return vitlab.load_checkpoint(out / "last.safetensors")


def test_bf16_evaluation_agrees_with_fp32_and_says_so(digits_model):
    fp32 = evaluate_checkpoint(digits_model, "digits", precision="fp32")
    bf16 = evaluate_checkpoint(digits_model, "digits", precision="bf16")
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert fp32["top1"] > 0.6  # it learned something
    assert abs(bf16["top1"] - fp32["top1"]) <= 2 / fp32["n"]  # at most two images change
    assert bf16["loss"] != fp32["loss"]  # bf16 did run: the logits are rounded
    assert abs(bf16["loss"] - fp32["loss"]) < 0.02 * fp32["loss"]
    assert next(digits_model.parameters()).dtype == torch.float32  # the model is not cast
    from vitlab.evaluate import format_report

    assert "in bf16" in format_report(bf16).splitlines()[0]
