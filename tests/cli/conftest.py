"""Tiny local stand-ins for the files the command line is given (a checkpoint, photos, a folder
of classes), shared by the CLI tests."""

import numpy as np
import pytest
from PIL import Image

import vitlab
from tests.conftest import perturb_


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    """A folder with `m.safetensors` (vit_test, 4 classes named as the synthetic set's, 32 px),
    `photo.png`, and `photos/` (two classes of six 40x48 colour photos each)."""
    root = tmp_path_factory.mktemp("standins")
    names = tuple(f"pattern {i}" for i in range(4))
    model = perturb_(vitlab.create_model("vit_test", num_classes=4, class_names=names))
    vitlab.save_checkpoint(model, root / "m.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "photo.png")
    for c, name in enumerate(("cat", "dog")):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 120, (40, 48, 3), dtype=np.uint8) + 120 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / "photos" / name / f"{i}.png")
    return root
