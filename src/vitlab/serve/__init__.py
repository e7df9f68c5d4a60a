"""`vitlab serve`: a web page and an HTTP API for any checkpoint vitlab loads, with dynamic
batching (`vitlab.serve.batcher`), the model and its outputs (`vitlab.serve.engine`) and the
FastAPI application (`vitlab.serve.app`). FastAPI and uvicorn are the `serve` extra:
`pip install 'vitlab[serve]'`."""

from __future__ import annotations

from vitlab.serve.app import ServeConfig, create_app
from vitlab.serve.batcher import Batcher, QueueFull
from vitlab.serve.engine import Engine

__all__ = ["Batcher", "Engine", "QueueFull", "ServeConfig", "create_app"]
