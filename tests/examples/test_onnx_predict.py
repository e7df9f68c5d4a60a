"""The README's deployment example, `examples/onnx_predict.py`: ONNX Runtime, PIL and numpy alone
reproduce `vitlab predict` on a non-square photo from the `.onnx` file's metadata."""

import ast
import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import vitlab
from tests.conftest import perturb_
from vitlab.predict import predict_files

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
skimage_data = pytest.importorskip("skimage.data")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path("examples") / "onnx_predict.py"  # run from the repository's root, as README shows


def test_the_example_needs_no_vitlab():
    tree = ast.parse((ROOT / SCRIPT).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    roots = {name.split(".")[0] for name in imported}
    assert roots <= {"__future__", "argparse", "csv", "json", "sys", "numpy", "onnxruntime", "PIL"}


def _run_example(onnx_file: Path, photo: Path) -> list[tuple[str, float]]:
    """`python examples/onnx_predict.py MODEL.onnx PHOTO`: its (label, probability) rows."""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(onnx_file), str(photo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    return [(r["label"], float(r["probability"])) for r in rows]


def _photo(tmp_path: Path, grey: bool) -> Path:
    """skimage's chelsea (300 x 451) as a JPEG; or, Fashion-MNIST-like, a 32 x 45 greyscale PNG of
    it, which a 32 px model crops without resampling (column offset 6.5, rounded to 6)."""
    img = Image.fromarray(skimage_data.chelsea())
    if grey:
        img = img.convert("L").resize((45, 32), Image.Resampling.BICUBIC)
    path = tmp_path / ("grey.png" if grey else "chelsea.jpg")
    img.save(path)
    return path


@pytest.mark.parametrize(("in_chans", "crop_pct"), [(3, 0.875), (1, 1.0)])
def test_the_example_agrees_with_vitlab_predict(tmp_path, in_chans, crop_pct):
    """Probabilities within 1e-3 and the same top 5. PIL's resampling and torchvision's (which
    vitlab uses) round a fraction of a percent of the pixels one uint8 level apart; on this
    random model that moves the photo's probabilities by up to about 4e-4, where a wrong filter,
    size or crop moves them by 8e-3 or more."""
    names = tuple(f"class {i}" for i in range(10))
    torch.manual_seed(0)
    mean, std = (0.485, 0.456, 0.406)[:in_chans], (0.229, 0.224, 0.225)[:in_chans]
    model = vitlab.create_model("vit_test", num_classes=10, class_names=names, in_chans=in_chans,
                                crop_pct=crop_pct, mean=mean, std=std)  # fmt: skip
    perturb_(model).eval()
    ckpt = vitlab.save_checkpoint(model, tmp_path / "m.safetensors")
    onnx_file = vitlab.save_checkpoint(model, tmp_path / "m.onnx", format="onnx")
    photo = _photo(tmp_path, grey=in_chans == 1)
    theirs = _run_example(onnx_file, photo)
    for path in (ckpt, onnx_file):
        ours = predict_files(vitlab.load_checkpoint(path), [photo], progress=False)
        top = ours.predictions[0].top
        assert [label for label, _ in theirs] == [label for _, label, _ in top], path
        assert max(abs(p - q) for (_, p), (_, _, q) in zip(theirs, top)) <= 1e-3, path
