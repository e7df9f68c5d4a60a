"""Multi-process training under `torchrun` (no launcher of our own): the process group, model
wrapping (DDP, or FSDP2's `fully_shard` for the largest variants), and rank-0-only I/O.

    torchrun --nproc_per_node=2 -m vitlab train --config fashion_mnist_vit

gloo on CPU, NCCL on GPU. Outside torchrun everything degrades to one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vitlab.runtime.device import pick_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), if any."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(device=pick_device(device))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev)


def is_main() -> bool:
    """True in the process that writes files and prints progress (rank 0, or no group)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, strategy: Literal["ddp", "fsdp"]) -> nn.Module:
    """DDP (gradients all-reduced, averaged) or FSDP2 (each block's parameters sharded, then
    the root); a single process gets the model back unchanged."""
    if info.world == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        inner = getattr(model, "encoder", model)  # a pre-training module's encoder
        for block in getattr(inner, "blocks", []):
            fully_shard(block)
        return fully_shard(model)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place; a no-op for one process)."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
