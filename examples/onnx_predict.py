"""Classify images with a vitlab `.onnx` file using ONNX Runtime, PIL and numpy only (no vitlab).

    pip install onnxruntime pillow numpy
    python examples/onnx_predict.py model.onnx photo.jpg [more.png ...] [--top 5]

Prints the CSV that `vitlab predict --out results.csv` writes (file, rank, class_index, label,
probability). Everything it needs is in the file's metadata: "preprocessing" (the recipe, as
JSON; README "Deploy" explains each key) and "class_names" (JSON list, one per output).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def load(path: str, mode: str) -> Image.Image:
    """Decode, apply the EXIF orientation, put transparency on white, convert to `mode`."""
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert(mode)


def preprocess(image: Image.Image, recipe: dict) -> np.ndarray:
    """One image (already in recipe["color_mode"]) -> float32 (1, C, H, W) as the model takes."""
    resize, crop = recipe["resize"], recipe["center_crop"]
    w, h = image.size
    short = resize["shortest_edge"]  # the short side becomes this; the long side rounds down
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    image = image.resize(size, Image.Resampling[resize["resample"]])
    # centre crop; Python's round() rounds halves to even, as the recipe says
    left, top = round((size[0] - crop["width"]) / 2), round((size[1] - crop["height"]) / 2)
    image = image.crop((left, top, left + crop["width"], top + crop["height"]))
    x = np.asarray(image, dtype=np.float32) / 255.0  # the recipe's rescale_factor, 1/255
    x = x.reshape(crop["height"], crop["width"], -1)  # (H, W, C); "L" images have no C axis
    mean = np.asarray(recipe["mean"], dtype=np.float32)
    std = np.asarray(recipe["std"], dtype=np.float32)
    x = (x - mean) / std
    return x.transpose(2, 0, 1)[None].astype(recipe["dtype"])  # (1, C, H, W): NCHW


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .onnx file written by vitlab convert --to onnx")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if "preprocessing" not in meta or "class_names" not in meta:
        sys.exit(
            f"{args.model} has no preprocessing recipe in its metadata; export it again with "
            "`vitlab convert CHECKPOINT OUT.onnx --to onnx`"
        )
    recipe, names = json.loads(meta["preprocessing"]), json.loads(meta["class_names"])
    input_name = session.get_inputs()[0].name
    out = csv.writer(sys.stdout)
    out.writerow(["file", "rank", "class_index", "label", "probability"])
    for path in args.images:
        x = preprocess(load(path, recipe["color_mode"]), recipe)
        probs = softmax(session.run(None, {input_name: x})[0][0])
        for rank, i in enumerate(np.argsort(-probs, kind="stable")[: args.top], start=1):
            out.writerow([path, rank, int(i), names[i], f"{probs[i]:.6f}"])


if __name__ == "__main__":
    main()
