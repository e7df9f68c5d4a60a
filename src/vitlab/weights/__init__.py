"""Weights: vitlab's own checkpoints and adapters for every ecosystem's layout."""

from vitlab.weights.checkpoint import SOURCES, load_checkpoint, save_checkpoint, unwrap_model

__all__ = ["SOURCES", "load_checkpoint", "save_checkpoint", "unwrap_model"]
