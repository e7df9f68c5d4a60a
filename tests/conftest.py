import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def perturb_(model: torch.nn.Module, scale: float = 0.02) -> torch.nn.Module:
    """Give every parameter random non-trivial values (reference inits leave zeros and ones,
    which would hide a swapped bias or norm)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model
