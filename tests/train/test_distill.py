"""Distillation from a teacher (DeiT, issue #25): the losses against a hand computation, a
distilled student on digits, the teacher's checks, its figures in the report, ONNX teachers,
and resuming a distilled run."""

import json
import math

import pytest
import torch

import vitlab
from tests.train.common import small_cfg
from vitlab.errors import ConfigError
from vitlab.train import run as run_module
from vitlab.train.distill import Teacher, distillation_loss
from vitlab.train.run import fit

# ------------------------------------------------------------------------------ the losses
S_CLS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
S_DIST = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
T = torch.tensor([[0.2, 3.0, 0.1], [2.0, 0.0, 1.0]])  # arg-max: 1, 0
Y = torch.tensor([0, 1])


def _ce(row, k):  # -log softmax(row)[k], by hand
    return -(row[k] - math.log(sum(math.exp(v) for v in row)))


def _softmax(row, tau):
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def test_hard_distillation_matches_a_hand_computation():
    s_cls, s_dist = S_CLS.tolist(), S_DIST.tolist()
    base = sum(_ce(s_cls[i], int(Y[i])) for i in range(2)) / 2
    teach = (_ce(s_dist[0], 1) + _ce(s_dist[1], 0)) / 2  # the teacher's arg-max as the label
    got = distillation_loss(S_CLS, S_DIST, T, Y, "hard")
    assert float(got) == pytest.approx(0.5 * base + 0.5 * teach, rel=1e-6)
    got = distillation_loss(S_CLS, S_DIST, T, Y, "hard", alpha=0.2)
    assert float(got) == pytest.approx(0.8 * base + 0.2 * teach, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_distillation_matches_a_hand_computation(tau):
    s_cls, s_dist, t = S_CLS.tolist(), S_DIST.tolist(), T.tolist()
    base = sum(_ce(s_cls[i], int(Y[i])) for i in range(2)) / 2
    kl = 0.0
    for i in range(2):  # KL(teacher || student) at temperature tau, per image, then averaged
        p, q = _softmax(t[i], tau), _softmax(s_dist[i], tau)
        kl += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q)) / 2
    got = distillation_loss(S_CLS, S_DIST, T, Y, "soft", alpha=0.1, tau=tau)
    assert float(got) == pytest.approx(0.9 * base + 0.1 * tau * tau * kl, rel=1e-6)
    default = distillation_loss(S_CLS, S_DIST, T, Y, "soft", tau=tau)  # the paper's alpha 0.1
    assert float(default) == pytest.approx(float(got), rel=1e-6)


def test_the_teacher_sees_its_own_normalisation_channels_and_size():
    seen = {}

    class Probe(torch.nn.Module):
        cfg = vitlab.create_model("vit_test", img_size=32, num_classes=3).cfg

        def forward(self, x):
            seen["x"] = x
            return torch.zeros(len(x), 3)

    raw = torch.rand(2, 1, 16, 16)  # grey images in [0, 1], normalised for a student
    student = (raw - 0.3) / 0.2
    Teacher(Probe(), (0.3,), (0.2,), "probe")(student)
    c = Probe.cfg
    want = torch.nn.functional.interpolate(
        raw.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", antialias=True
    )
    want = (want - torch.tensor(c.mean).view(1, 3, 1, 1)) / torch.tensor(c.std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["x"], want)


# ------------------------------------------------------------------------------ runs
DIGITS = dict(data="digits", val_split=0.1, batch_size=64, warmup_steps=5, lr=3e-3)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A small BiT ResNet trained a little on digits: the teacher."""
    out = tmp_path_factory.mktemp("teacher")
    bit = {"layers": [1, 1], "stem_type": "small", "stem_width": 8, "gn_groups": 8}
    cfg = small_cfg(out, model="bit_r50x1", steps=60, model_args=bit, **DIGITS)
    return fit(cfg).run_dir / "last.safetensors"


def _dist_loss(model, x, teacher):
    model.eval()
    with torch.no_grad():
        _, dist = model.forward_heads(x)
        return float(torch.nn.functional.cross_entropy(dist, teacher(x).argmax(-1)))


def test_a_distilled_student_trains_and_its_distillation_head_learns(tmp_path, teacher_path):
    cfg = small_cfg(tmp_path, teacher=str(teacher_path), steps=80,
                    model_args={"patch_size": 4, "distill_token": True}, **DIGITS)  # fmt: skip
    torch.manual_seed(0)
    untrained = vitlab.create_model("vit_test", patch_size=4, distill_token=True, img_size=16,
                                    num_classes=10, in_chans=1)  # fmt: skip
    run = fit(cfg)
    student = vitlab.load_checkpoint(run.run_dir / "last.safetensors")
    teacher = vitlab.load_checkpoint(teacher_path).eval()
    x = vitlab.data.datasets.load_data("digits").test.images[:256].float() / 255  # 8 x 8 px
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear")
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (student.cfg.mean, student.cfg.std))
    x = (x - mean) / std
    t = Teacher(teacher, student.cfg.mean, student.cfg.std, "t")
    assert _dist_loss(student, x, t) < 0.7 * _dist_loss(untrained.eval(), x, t)
    report = json.loads((run.run_dir / "report.json").read_text())
    assert report["teacher"]["checkpoint"] == str(teacher_path)
    assert 0.3 < report["teacher"]["top1"] <= 1.0 and report["top1"] > 0.3


def test_a_teacher_with_other_classes_is_refused_before_training(tmp_path, teacher_path):
    cfg = small_cfg(tmp_path, teacher=str(teacher_path), steps=5, data="synthetic")
    with pytest.raises(ConfigError, match="has 10 classes but the data has 4"):
        fit(cfg)
    assert not (tmp_path / "run" / "last.state.pt").exists()


def test_an_onnx_teacher_and_soft_distillation_without_a_distill_token(tmp_path, teacher_path):
    pytest.importorskip("onnxruntime")
    onnx = vitlab.save_checkpoint(vitlab.load_checkpoint(teacher_path), tmp_path / "t.onnx",
                                  format="onnx")  # fmt: skip
    cfg = small_cfg(tmp_path, teacher=str(onnx), distill="soft", steps=20, **DIGITS)
    report = fit(cfg).report
    assert report["teacher"]["distill"] == "soft" and report["teacher"]["top1"] > 0.3


def test_a_distilled_run_resumes_where_it_stopped(tmp_path, teacher_path, monkeypatch):
    kw = dict(teacher=str(teacher_path), model_args={"patch_size": 4, "distill_token": True},
              epoch_steps=10, steps=30, **DIGITS)  # fmt: skip
    whole = fit(small_cfg(tmp_path / "a", **kw))
    end_of_epoch = run_module._end_of_epoch

    def killed_after_step_20(cfg, state, *args):
        end_of_epoch(cfg, state, *args)
        if state.step == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "_end_of_epoch", killed_after_step_20)
    with pytest.raises(KeyboardInterrupt):
        fit(small_cfg(tmp_path / "b", **kw))
    monkeypatch.setattr(run_module, "_end_of_epoch", end_of_epoch)
    resumed = fit(small_cfg(tmp_path / "b", **kw), resume="auto")
    assert resumed.state.step == 30
    a = vitlab.load_checkpoint(whole.run_dir / "last.safetensors").state_dict()
    b = vitlab.load_checkpoint(resumed.run_dir / "last.safetensors").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_a_teacher_for_a_run_without_labels_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="teacher teaches a classifier"):
        small_cfg(tmp_path, teacher="t.safetensors", objective="mae")
