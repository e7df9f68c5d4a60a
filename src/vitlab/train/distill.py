"""Distillation from a teacher (DeiT, Touvron et al. 2021, section 5): the student learns the
labels with its class head and the teacher's outputs with its distillation head (the
distillation token's, `ViTConfig.distill_token`; a student without one learns both with its
only head, as in Hinton et al. 2015).

The teacher is any checkpoint `vitlab.load_checkpoint` reads, an `.onnx` file included (such as
a BiT ResNet trained in vitlab). It runs in eval mode, without gradients, on the student's own
augmented batch, brought to its own normalisation, channels and resolution (`Teacher`).

Losses (Z_s the student's logits, Z_t the teacher's, ψ the softmax, y the label):
  hard: (1 - α) CE(Z_s_cls, y) + α CE(Z_s_dist, argmax Z_t), α = 1/2 by default (DeiT's)
  soft: (1 - α) CE(Z_s_cls, y) + α τ² KL(ψ(Z_t / τ) ‖ ψ(Z_s_dist / τ)), α 0.1, τ 3 (the paper's)
The KL term is averaged over the batch (the paper's formula); facebookresearch/deit's code
divides its sum by batch x classes instead, which scales α by 1/classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError

log = logging.getLogger("vitlab")

Distill = Literal["hard", "soft"]
DEFAULT_ALPHA = {"hard": 0.5, "soft": 0.1}


def alpha_of(distill: Distill, alpha: float | None) -> float:
    """The weight of the teacher's term: `alpha`, or the default of the kind."""
    return DEFAULT_ALPHA[distill] if alpha is None else alpha


def distillation_loss(
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    distill: Distill = "hard",
    alpha: float | None = None,
    tau: float = 3.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DeiT's objective (section 5, equations 2-3) on (B, K) logits; `target` holds class
    indices (B,) or (mixup) class probabilities (B, K)."""
    a = alpha_of(distill, alpha)
    base = F.cross_entropy(cls_logits.float(), target, label_smoothing=label_smoothing)
    t, s = teacher_logits.float(), dist_logits.float()
    if distill == "hard":
        teach = F.cross_entropy(s, t.argmax(dim=-1))
    else:
        log_p_t, log_p_s = F.log_softmax(t / tau, dim=-1), F.log_softmax(s / tau, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        teach = kl * tau * tau
    return (1 - a) * base + a * teach


@dataclass
class Teacher:
    """A frozen model that gives logits for the student's normalised batch."""

    model: nn.Module
    mean: tuple[float, ...]  # the student's normalisation, undone before the teacher's
    std: tuple[float, ...]
    path: str

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images normalised for the student -> (B, K) float32 teacher logits."""
        c = self.model.cfg
        x = x.float() * _column(self.std, x) + _column(self.mean, x)  # back to [0, 1]
        if x.shape[1] != c.in_chans:  # grey <-> RGB, as `vitlab eval` converts images
            x = x.mean(1, keepdim=True) if c.in_chans == 1 else x.expand(-1, c.in_chans, -1, -1)
        if x.shape[-1] != c.img_size or x.shape[-2] != c.img_size:
            x = F.interpolate(x, size=(c.img_size, c.img_size), mode="bilinear", antialias=True)
        x = (x - _column(c.mean, x)) / _column(c.std, x)
        return self.model(x.to(_device_of(self.model, x))).float().to(x.device)


def _column(v: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)


def _device_of(model: nn.Module, x: torch.Tensor) -> torch.device:
    p = next(iter(model.parameters()), None)  # an ONNX model holds none: it runs on the CPU
    return p.device if p is not None else torch.device("cpu")


def load_teacher(
    path: str | Path,
    num_classes: int,
    class_names: tuple[str, ...] | None,
    student: Any,
    device: torch.device,
) -> Teacher:
    """The teacher at `path`, frozen, in eval mode on `device` (an ONNX one on the CPU);
    refused in one line when its classes are not the data's (`student` is the student's
    config: its mean and std are the batch's)."""
    from vitlab.weights.checkpoint import load_checkpoint

    model = load_checkpoint(path)
    k = model.cfg.num_classes
    if k != num_classes:
        raise ConfigError(
            f"the teacher {path} has {k} classes but the data has {num_classes}; distil from a "
            "teacher trained on the same classes (fine-tune it first: vitlab finetune --from)"
        )
    names = model.cfg.class_names
    if names and class_names and tuple(names) != tuple(class_names):
        raise ConfigError(
            f"the teacher {path} knows the classes {', '.join(names[:3])}, ... but the data's are "
            f"{', '.join(class_names[:3])}, ...: a teacher must name the same classes, in order"
        )
    if any(True for _ in model.parameters()):
        model = model.to(device).requires_grad_(False)
    return Teacher(model.eval(), tuple(student.mean), tuple(student.std), str(path))


def student_heads(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple:
    """The student's (class, distillation) logits from its training forward: a distilled ViT
    returns both; any other model's one head answers for both."""
    return out if isinstance(out, tuple) else (out, out)
