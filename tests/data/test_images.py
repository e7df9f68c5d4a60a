import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vitlab.data.images import (
    SAMPLE_PHOTOS,
    ImageError,
    find_images,
    load_image,
    read_images,
    sample_photos,
)


def _rng_pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_bomb_png(path, width=20_000, height=20_000):
    """A valid PNG header claiming width x height pixels, with almost no data behind it."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat))
    return path


def write_bad_files(d):
    """One file of every kind a user may throw at vitlab that is not a usable image."""
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rng_pixels((64, 64, 3))).save(d / "whole.jpg", quality=90)
    data = (d / "whole.jpg").read_bytes()
    (d / "whole.jpg").unlink()
    bad = {
        "truncated.jpg": "truncated",
        "empty.png": "empty",
        "notes.jpg": "not an image",
        "bomb.png": "large",
        "folder.png": "directory",
    }
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "notes.jpg").write_text("this is a text file, not a photo\n")
    write_bomb_png(d / "bomb.png")
    (d / "folder.png").mkdir()
    return bad


def test_every_bad_kind_names_the_file_and_the_reason(tmp_path):
    bad = write_bad_files(tmp_path)
    bad["missing.png"] = "no such file"
    for name, reason in bad.items():
        with pytest.raises(ImageError) as e:
            load_image(tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and reason in msg and "\n" not in msg


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = _rng_pixels((8, 9, 4))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    alpha = rgba[..., 3:].astype(float) / 255
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)
    got = np.asarray(load_image(tmp_path / "a.png"), float)
    assert np.abs(got - expected).max() <= 1
    la = rgba[..., [0, 3]]
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    got = np.asarray(load_image(tmp_path / "la.png", channels=1), float)
    assert np.abs(got - (la[..., 0] * alpha[..., 0] + 255 * (1 - alpha[..., 0]))).max() <= 1


def test_palette_is_expanded(tmp_path):
    palette = _rng_pixels((256, 3))
    idx = _rng_pixels((6, 7), seed=1)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette.ravel().tolist())
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "p.png")), palette[idx])


def test_16_bit_is_scaled_to_8_bits(tmp_path):
    v = np.random.default_rng(0).integers(0, 65536, (5, 6)).astype(np.uint16)
    Image.fromarray(v).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    got = np.asarray(load_image(tmp_path / "deep.png", channels=1), float)
    assert np.abs(got - v / 65535 * 255).max() <= 1
    assert load_image(tmp_path / "deep.png").mode == "RGB"


def test_cmyk_and_gray_convert(tmp_path):
    cmyk = np.zeros((4, 4, 4), np.uint8)
    cmyk[..., 0] = 255  # pure cyan
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "c.tif"))[0, 0], [0, 255, 255])
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").mode == "RGB"
    gray = _rng_pixels((5, 5))
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    rgb = np.asarray(load_image(tmp_path / "g.png"))
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, axis=2))


def test_exif_orientation_is_applied(tmp_path):
    pixels = _rng_pixels((10, 20, 3))
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.png", exif=exif)
    got = np.asarray(load_image(tmp_path / "rot.png"))
    np.testing.assert_array_equal(got, np.rot90(pixels, k=-1))


def test_find_images_keeps_odd_entries_for_reporting(tmp_path):
    write_bad_files(tmp_path / "in")
    Image.new("RGB", (4, 4)).save(tmp_path / "in" / "sub_ok.png")
    (tmp_path / "in" / "readme.txt").write_text("skipped: not an image suffix")
    (tmp_path / "empty_dir").mkdir()
    found = find_images([tmp_path / "in", tmp_path / "nothere.jpg", tmp_path / "empty_dir"])
    names = [p.name for p in found]
    assert "readme.txt" not in names
    assert {"truncated.jpg", "empty.png", "notes.jpg", "bomb.png", "folder.png"} <= set(names)
    assert names[-2:] == ["nothere.jpg", "empty_dir"]
    with pytest.raises(ImageError, match="directory without image files"):
        load_image(tmp_path / "empty_dir")


def test_read_images_reports_bad_and_keeps_good(tmp_path):
    write_bad_files(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    errors = []
    images = read_images([tmp_path], channels=1, on_error=errors.append)
    assert [n for n, _ in images] == [str(tmp_path / "ok.png")]
    assert images[0][1].mode == "L" and len(errors) == 5


def test_sample_photos_are_scikit_image_data():
    from skimage import data

    photos = sample_photos(channels=3)
    assert [n for n, _ in photos] == list(SAMPLE_PHOTOS)
    np.testing.assert_array_equal(np.asarray(photos[0][1]), data.astronaut())
    assert all(img.mode == "L" for _, img in sample_photos(channels=1))
