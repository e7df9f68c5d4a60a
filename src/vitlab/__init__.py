"""vitlab: Vision Transformers as "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021)
defines them.

    import vitlab
    vitlab.list_models()
    model = vitlab.create_model("vit_b16", num_classes=10, img_size=384)
    model = vitlab.load_checkpoint("weights.safetensors")
    vitlab.save_checkpoint(model, "out.safetensors")

The names below are imported on first use (PEP 562), so `import vitlab` and `vitlab --help`
do not load torch until a model is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vitlab._version import __version__
from vitlab.errors import CheckpointError, ConfigError, VitlabError

# public name -> the module that defines it
_LAZY = {
    "ResNetConfig": "vitlab.models.config",
    "ViTConfig": "vitlab.models.config",
    "VisionTransformer": "vitlab.models.vit",
    "create_model": "vitlab.models.registry",
    "get_config": "vitlab.models.registry",
    "list_models": "vitlab.models.registry",
    "load_checkpoint": "vitlab.weights.checkpoint",
    "save_checkpoint": "vitlab.weights.checkpoint",
    "save_pretrained": "vitlab.weights.checkpoint",
    "push_to_hub": "vitlab.weights.checkpoint",
}

if TYPE_CHECKING:
    from vitlab.models.config import ResNetConfig, ViTConfig
    from vitlab.models.registry import create_model, get_config, list_models
    from vitlab.models.vit import VisionTransformer
    from vitlab.weights.checkpoint import (
        load_checkpoint,
        push_to_hub,
        save_checkpoint,
        save_pretrained,
    )

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ResNetConfig",
    "ViTConfig",
    "VisionTransformer",
    "VitlabError",
    "__version__",
    "create_model",
    "get_config",
    "list_models",
    "load_checkpoint",
    "push_to_hub",
    "save_checkpoint",
    "save_pretrained",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
