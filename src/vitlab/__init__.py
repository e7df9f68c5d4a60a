"""vitlab: Vision Transformers as "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021)
defines them.

    import vitlab
    vitlab.list_models()
    model = vitlab.create_model("vit_b16", num_classes=10, img_size=384)
    model = vitlab.load_checkpoint("weights.safetensors")
    vitlab.save_checkpoint(model, "out.safetensors")
"""

__version__ = "0.1.0"

from vitlab.errors import CheckpointError, ConfigError, VitlabError
from vitlab.models import (
    ResNetConfig,
    VisionTransformer,
    ViTConfig,
    create_model,
    get_config,
    list_models,
)
from vitlab.weights import load_checkpoint, save_checkpoint

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
    "save_checkpoint",
]
