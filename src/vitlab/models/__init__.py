"""Model definitions: configs, layers, the Vision Transformer and the registry of variants."""

from vitlab.models.config import ResNetConfig, ViTConfig
from vitlab.models.flops import vit_flops
from vitlab.models.registry import create_model, get_config, get_variant, list_models
from vitlab.models.vit import VisionTransformer

__all__ = [
    "ResNetConfig",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "get_config",
    "get_variant",
    "list_models",
    "vit_flops",
]
