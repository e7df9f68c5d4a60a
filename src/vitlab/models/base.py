"""What every vitlab model shares: its data config and its size.

Saving and loading (including the Hugging Face Hub) live in `vitlab.weights`, which knows the
models; the models know nothing of files.
"""

from __future__ import annotations

from typing import Any

from vitlab.preprocess import Preprocess


class VitlabModule:
    """A mixin for vitlab's `nn.Module`s, which have a `cfg` and say which `interpolation`
    their weights expect."""

    interpolation: str = "bicubic"

    @property
    def data_config(self) -> dict[str, Any]:
        """How inputs must be prepared for these weights: size, channels, normalisation, crop
        (`vitlab.preprocess.Preprocess`'s fields, which apply them)."""
        c = self.cfg
        return Preprocess(
            img_size=c.img_size,
            in_chans=c.in_chans,
            mean=c.mean,
            std=c.std,
            crop_pct=c.crop_pct,
            interpolation=self.interpolation,
        ).as_dict()

    def num_params(self, trainable_only: bool = False) -> int:
        """The number of parameters (only those that train, with `trainable_only`)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
