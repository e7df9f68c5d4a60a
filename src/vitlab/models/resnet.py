"""ResNetV2 as in BiT (Kolesnikov et al. 2020): the paper's CNN baseline and the hybrid's stem.

Two flavours share one module tree, named as timm names it so timm's state dicts load unchanged:

- BiT (`preact=True`): pre-activation bottlenecks, GroupNorm + ReLU *before* each convolution,
  a final GroupNorm + ReLU, global average pooling and a 1x1-convolution head (paper section 4.1,
  "Baselines").
- The hybrid stem (`preact=False`, paper section 3.1 "Hybrid Architecture"): post-activation
  bottlenecks as vit_jax and timm build them, TensorFlow "SAME" padding, no final norm and no head;
  `HybridEmbed` projects its stride-16 (or 32) feature map to tokens.

Every convolution is weight-standardised and every norm is GroupNorm(32).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError
from vitlab.models.base import VitlabModule
from vitlab.models.config import ResNetConfig, ViTConfig, replace


def _same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's "SAME" padding: output = ceil(input / stride), the extra pixel at the end."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class StdConv2d(nn.Conv2d):
    """A bias-free convolution with weight standardisation (Qiao et al. 2019; BiT section 4.1).

    Each output filter is standardised over (in, kh, kw) before use. `form="var"` divides by
    sqrt(var + eps) (timm, BiT's PyTorch code); `form="std"` by (std + eps) (vit_jax's StdConv).
    `same=True` pads as TensorFlow's "SAME" does (the hybrid); otherwise symmetrically.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int,
        stride: int = 1,
        *,
        eps: float = 1e-8,
        form: str = "var",
        same: bool = False,
    ) -> None:
        if same:  # static when symmetric padding gives the same result (stride 1, odd kernel)
            dynamic = not (stride == 1 and kernel_size % 2 == 1)
            padding = 0 if dynamic else (kernel_size - 1) // 2
        else:  # symmetric, as timm's StdConv2d pads
            dynamic, padding = False, ((stride - 1) + (kernel_size - 1)) // 2
        super().__init__(in_chans, out_chans, kernel_size, stride, padding, bias=False)
        self.eps, self.form, self.dynamic_pad = eps, form, dynamic

    def standardized_weight(self) -> torch.Tensor:
        """The kernel with zero mean and unit variance per output filter (over in, kh, kw)."""
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        if self.form == "std":
            return (w - mean) / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + self.eps)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - mean) * torch.rsqrt(var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_pad:
            x = _same_pad(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.standardized_weight(), None, self.stride, self.padding)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm followed by ReLU (or by nothing when `act=False`)."""

    def __init__(self, channels: int, cfg: ResNetConfig, act: bool = True) -> None:
        if channels % cfg.gn_groups:
            raise ConfigError(
                f"{channels} channels do not split into {cfg.gn_groups} groups; "
                "use a stem_width that is a multiple of gn_groups"
            )
        super().__init__(cfg.gn_groups, channels, eps=cfg.gn_eps)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def _conv(cfg: ResNetConfig, cin: int, cout: int, k: int, stride: int = 1) -> StdConv2d:
    return StdConv2d(
        cin,
        cout,
        k,
        stride,
        eps=cfg.std_conv_eps,
        form=cfg.weight_std,
        same=cfg.stem_type == "same",
    )


class Downsample(nn.Module):
    """The projection shortcut: a strided 1x1 convolution (plus a norm in post-activation units)."""

    def __init__(self, cfg: ResNetConfig, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = _conv(cfg, cin, cout, 1, stride)
        self.norm = nn.Identity() if cfg.preact else GroupNormAct(cout, cfg, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class PreActBottleneck(nn.Module):
    """BiT's unit: norm-ReLU-conv three times (1x1, 3x3 with the stride, 1x1), plus shortcut."""

    def __init__(self, cfg: ResNetConfig, cin: int, cout: int, stride: int, proj: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.downsample = Downsample(cfg, cin, cout, stride) if proj else None
        self.norm1 = GroupNormAct(cin, cfg)
        self.conv1 = _conv(cfg, cin, mid, 1)
        self.norm2 = GroupNormAct(mid, cfg)
        self.conv2 = _conv(cfg, mid, mid, 3, stride)
        self.norm3 = GroupNormAct(mid, cfg)
        self.conv3 = _conv(cfg, mid, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_pre)
        x = self.conv1(x_pre)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return x + shortcut


class Bottleneck(nn.Module):
    """The post-activation unit of the hybrid stem: conv-norm(-ReLU) three times, add, ReLU."""

    def __init__(self, cfg: ResNetConfig, cin: int, cout: int, stride: int, proj: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.downsample = Downsample(cfg, cin, cout, stride) if proj else None
        self.conv1 = _conv(cfg, cin, mid, 1)
        self.norm1 = GroupNormAct(mid, cfg)
        self.conv2 = _conv(cfg, mid, mid, 3, stride)
        self.norm2 = GroupNormAct(mid, cfg)
        self.conv3 = _conv(cfg, mid, cout, 1)
        self.norm3 = GroupNormAct(cout, cfg, act=False)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act3(x + shortcut)


class ResNetStage(nn.Module):
    """`depth` units; the first one changes width (and resolution) through a projection."""

    def __init__(self, cfg: ResNetConfig, cin: int, cout: int, stride: int, depth: int) -> None:
        super().__init__()
        unit = PreActBottleneck if cfg.preact else Bottleneck
        self.blocks = nn.Sequential(
            *[
                unit(cfg, cin if i == 0 else cout, cout, stride if i == 0 else 1, proj=i == 0)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def make_stem(cfg: ResNetConfig) -> nn.Sequential:
    """The root block: "fixed" (BiT: 7x7/2 conv, zero pad 1, 3x3/2 max-pool), "same" (the hybrid:
    7x7/2 conv, GroupNorm, ReLU, 3x3/2 max-pool, all TF-"SAME"), or "small" (a 3x3/1 conv and no
    pooling, for 28-64 px images such as Fashion-MNIST)."""
    width = cfg.stem_width * cfg.width_factor
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if cfg.stem_type == "small":
        layers["conv"] = _conv(cfg, cfg.in_chans, width, 3, 1)
    else:
        layers["conv"] = _conv(cfg, cfg.in_chans, width, 7, 2)
    if not cfg.preact:
        layers["norm"] = GroupNormAct(width, cfg)
    if cfg.stem_type == "fixed":
        layers["pad"] = nn.ConstantPad2d(1, 0.0)
        layers["pool"] = nn.MaxPool2d(kernel_size=3, stride=2)
    elif cfg.stem_type == "same":
        layers["pool"] = _SameMaxPool()
    return nn.Sequential(layers)


class _SameMaxPool(nn.Module):
    """3x3 stride-2 max-pool with TensorFlow "SAME" padding (padded with -inf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(_same_pad(x, 3, 2, value=-math.inf), 3, 2)


class ClassifierHead(nn.Module):
    """Global average pooling is done by `ResNetV2.pool`; this holds BiT's 1x1-conv classifier
    (named `head.fc` as in timm) applied to the pooled (B, C) features."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, num_classes, 1) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.fc, nn.Identity):
            return x
        return self.fc(x[:, :, None, None]).flatten(1)  # (B, C, 1, 1) -> (B, classes)


class ResNetV2(nn.Module, VitlabModule):
    """BiT ResNet-v2 (pre-activation) or the hybrid's post-activation ResNet.

    Forward runs in stages like the ViT: `forward_features` (B, C, h, w) -> `pool` (B, C) ->
    `forward_head` (B, num_classes).
    """

    interpolation = "bilinear"  # BiT's and timm's preprocessing for these weights

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = make_stem(cfg)
        width = cfg.stem_width * cfg.width_factor
        cin, stages = width, []
        for i, depth in enumerate(cfg.layers):
            cout = 4 * width * 2**i
            stages.append(ResNetStage(cfg, cin, cout, 1 if i == 0 else 2, depth))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.norm = GroupNormAct(cin, cfg) if cfg.preact else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = ClassifierHead(cin, cfg.num_classes)
        if self.stem.conv.weight.device.type != "meta":  # meta tensors hold no values
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """He-normal convolutions, unit GroupNorms, and a zero head as BiT initialises it."""
        for m in self.modules():
            if isinstance(m, StdConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._zero_head()

    def _zero_head(self) -> None:
        if isinstance(self.head.fc, nn.Conv2d):
            nn.init.zeros_(self.head.fc.weight)
            nn.init.zeros_(self.head.fc.bias)

    def reset_classifier(
        self, num_classes: int, class_names: tuple[str, ...] | None = None
    ) -> None:
        """A new zero-initialised head for `num_classes` (fine-tuning, BiT section 3.3)."""
        self.cfg = replace(self.cfg, num_classes=num_classes, class_names=class_names)
        dev = self.stem.conv.weight.device
        self.head = ClassifierHead(self.num_features, num_classes).to(dev)
        with torch.no_grad():
            self._zero_head()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C', H/s, W/s) feature map (s = 32 for BiT, 8 for the small stem)."""
        if x.shape[1] != self.cfg.in_chans:
            raise ConfigError(
                f"input has {x.shape[1]} channels but the model takes {self.cfg.in_chans}; "
                "convert the images or build the model with in_chans="
                f"{x.shape[1]}"
            )
        return self.norm(self.stages(self.stem(x)))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C): global average pooling."""
        return x.mean(dim=(2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C) pooled features -> (B, num_classes) logits."""
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.pool(self.forward_features(x)))

    def no_weight_decay(self) -> set[str]:
        """No extra names: every bias and norm weight is skipped by the optimizer anyway."""
        return set()


class HybridEmbed(nn.Module):
    """The hybrid's patch embedding (paper section 3.1): a ResNet's feature map cut into
    P x P patches (P = 1 in the paper) and projected linearly to D."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.backbone is None:
            raise ConfigError("HybridEmbed needs a config with a backbone (a ResNetConfig)")
        bb = replace(cfg.backbone, in_chans=cfg.in_chans, num_classes=0, class_names=None)
        self.backbone = ResNetV2(bb)
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(
            self.backbone.num_features, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, gh, gw, D)."""
        feat = self.backbone.forward_features(x)  # (B, C', H/s, W/s)
        p = self.patch_size
        if feat.shape[-2] % p or feat.shape[-1] % p:
            raise ConfigError(
                f"the CNN's {feat.shape[-2]}x{feat.shape[-1]} feature map is not divisible by "
                f"the patch size {p}; use an input size that is a multiple of the total stride"
            )
        return self.proj(feat).permute(0, 2, 3, 1)  # (B, gh, gw, D)
