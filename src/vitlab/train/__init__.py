"""Training and fine-tuning: config, loop, optimiser, checkpoints/resume, distributed."""

from vitlab.train.config import TrainConfig, build_config
from vitlab.train.run import eval_checkpoint, fit

__all__ = ["TrainConfig", "build_config", "eval_checkpoint", "fit"]
