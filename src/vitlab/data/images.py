"""Image decoding a user can throw anything at: EXIF orientation, every PIL mode, clear errors.

`load_image` returns a PIL image in the mode a model expects ("RGB" or "L") or raises
`ImageError` naming the file and the reason (empty, truncated, not an image, too large);
`decode_image` does the same for bytes already in memory (a member of a WebDataset shard).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitlab.errors import VitlabError, require
from vitlab.preprocess import color_mode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_PIXELS = 178_956_970  # PIL's own hard limit (2 x its warning threshold)


class ImageError(VitlabError):
    """A file that cannot be used as an image; the message names the file and the reason, and
    `kind` says which: "missing", "not_image" (empty, or no format PIL knows), "too_large" (a
    possible decompression bomb), "corrupt" (truncated or damaged) or "unusable"."""

    def __init__(self, message: str, kind: str = "unusable") -> None:
        super().__init__(message)
        self.kind = kind


def load_image(path: str | Path, channels: int = 3, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` fully, apply its EXIF orientation, and convert it to RGB (3 channels) or
    L (1 channel): alpha is composited on white, palettes expanded, CMYK converted, 16-bit and
    float images scaled to 8 bits."""
    path = Path(path)
    if path.is_dir():
        named = path.suffix.lower() in IMAGE_SUFFIXES
        why = "a directory, not an image" if named else "a directory without image files"
        raise ImageError(f"{path}: {why}")
    return _decode(path, str(path), channels, max_pixels)


def decode_image(
    data: bytes, name: str, channels: int = 3, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """`load_image` for an image already in memory (a member of a tar shard); `name` is what
    the errors call it."""
    return _decode(io.BytesIO(data), name, channels, max_pixels)


def _decode(source: Path | io.BytesIO, name: str, channels: int, max_pixels: int) -> Image.Image:
    try:
        size = source.stat().st_size if isinstance(source, Path) else source.getbuffer().nbytes
        if size == 0:
            raise ImageError(f"{name}: empty file (0 bytes)", "not_image")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width * img.height > max_pixels:
                    raise ImageError(
                        f"{name}: {img.width}x{img.height} px is larger than the {max_pixels} "
                        "pixel limit (a possible decompression bomb); downscale it first",
                        "too_large",
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: too large to decode safely ({e})", "too_large") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (format not recognised)", "not_image") from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file", "missing") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image", "missing") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ImageError(f"{name}: truncated or corrupt image ({e})", "corrupt") from None
    return to_mode(img, channels)


def to_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """Convert any PIL mode to "RGB" (channels=3) or "L" (channels=1)."""
    if channels not in (1, 3):
        raise ImageError(f"models take 1 or 3 channels, not {channels}")
    target = color_mode(channels)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = (
            65535.0 if img.mode != "F" and arr.max(initial=0) > 255 else max(arr.max(initial=0), 1)
        )
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == target else img.convert(target)


def find_images(paths: list[str | Path]) -> list[Path]:
    """Files named directly, and every image file under the directories named, sorted.

    Anything named directly is kept even when it is missing or not a file, and so is an entry
    with an image suffix under a directory that is not a regular file (a folder called x.jpg, a
    broken link), so `load_image` can report each; a directory without any image files is kept
    as itself for the same reason. Files without an image suffix inside a directory are skipped.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            odd_dirs = {f for f in found if f.is_dir()}
            found = [f for f in found if not any(d in odd_dirs for d in f.parents)]
            out += found or [p]
        else:
            out.append(p)
    return out


SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea")


def sample_photos(channels: int = 3) -> list[tuple[str, Image.Image]]:
    """scikit-image's bundled test photos (astronaut, coffee, chelsea the cat), as (name, image)
    pairs in the mode a model with `channels` input channels expects."""
    data = require("skimage.data", "inspect", "The sample photos (or pass your own images)")
    return [(n, to_mode(Image.fromarray(getattr(data, n)()), channels)) for n in SAMPLE_PHOTOS]


def read_images(
    paths: list[str | Path], channels: int = 3, on_error: Callable[[ImageError], None] | None = None
) -> list[tuple[str, Image.Image]]:
    """Every image under `paths` (see `find_images`) as (name, image) pairs; a file that cannot
    be read is passed to `on_error` (or ignored) and the rest are still returned."""
    out = []
    for f in find_images(paths):
        try:
            out.append((str(f), load_image(f, channels)))
        except ImageError as e:
            if on_error is not None:
                on_error(e)
    return out
