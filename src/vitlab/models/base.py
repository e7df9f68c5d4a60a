"""The base every vitlab model shares (data config, size, the Hugging Face Hub mixin).

The Hub methods import `vitlab.weights` only when called, so `models` stays free of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelHubMixin


class VitlabModule(
    ModelHubMixin,
    library_name="vitlab",
    tags=["vision-transformer", "image-classification"],
    repo_url="https://arxiv.org/abs/2010.11929",
):
    """What every vitlab model shares: its data config, its size, and the Hub.

    `save_pretrained(dir)` writes vitlab's self-describing model.safetensors (config and class
    names in its metadata) plus config.json; `from_pretrained(dir_or_repo_id)` reads it back
    with `vitlab.load_checkpoint`, which also takes other layouts (a transformers ViT repo).
    Subclasses are `nn.Module`s with a `cfg` and say which `interpolation` their weights expect.
    """

    interpolation: str = "bicubic"

    @property
    def data_config(self) -> dict[str, Any]:
        """How inputs must be prepared for these weights: size, channels, normalisation, crop."""
        c = self.cfg
        return {
            "img_size": c.img_size,
            "in_chans": c.in_chans,
            "mean": c.mean,
            "std": c.std,
            "crop_pct": c.crop_pct,
            "interpolation": self.interpolation,
        }

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _save_pretrained(self, save_directory: Path) -> None:
        import json

        from vitlab.weights.checkpoint import save_checkpoint
        from vitlab.weights.io import atomic_write

        save_checkpoint(self, Path(save_directory) / "model.safetensors")
        text = json.dumps(self.cfg.to_dict(), indent=2, sort_keys=True)
        atomic_write(Path(save_directory) / "config.json", lambda tmp: tmp.write_text(text))

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        **model_kwargs: Any,
    ) -> Any:
        from vitlab.weights.checkpoint import load_checkpoint
        from vitlab.weights.hub import resolve_reference

        if os.path.isdir(model_id):
            path = Path(model_id)
        else:
            ref = f"hf-hub:{model_id}" + (f"@{revision}" if revision else "")
            kw = {"force_download": force_download, "local_files_only": local_files_only}
            path = resolve_reference(ref, cache_dir, token=token, **kw)
        return load_checkpoint(path, **model_kwargs)
