import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import vitlab
from tests.conftest import perturb_
from tests.data.test_images import write_bad_files
from vitlab.cli.main import main

CLASSES = tuple(f"class_{i}" for i in range(10))


@pytest.fixture
def checkpoint(tmp_path):
    model = perturb_(vitlab.create_model("vit_test", class_names=CLASSES), 0.3)
    return vitlab.save_checkpoint(model, tmp_path / "m.safetensors")


def _good_images(d):
    """One image of every mode a user may have, each with a different size."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (48, 40, 3), np.uint8)
    Image.fromarray(rgb).save(d / "rgb.jpg")
    Image.fromarray(rgb[..., 0]).save(d / "gray.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.gif")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA").save(d / "rgba.png")
    Image.fromarray(rgb[..., :2], "LA").save(d / "la.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65536, (30, 33)).astype(np.uint16)).save(d / "deep16.png")
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 8
    img.save(d / "rotated.jpg", exif=exif)
    return sorted(p.name for p in d.iterdir())


def test_folder_with_every_bad_kind(tmp_path, checkpoint, capsys):
    folder = tmp_path / "photos"
    good = _good_images(folder)
    bad = write_bad_files(folder / "bad")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "res.json"
    rc = main(["-q", "predict", "--checkpoint", str(checkpoint), str(folder), str(missing),
               "--out", str(out), "--batch-size", "3", "--topk", "3"])  # fmt: skip
    assert rc == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(lines) == len(bad) + 1
    for name, reason in {**bad, "missing.jpg": "no such file"}.items():
        assert any(name in line and reason in line for line in lines), name
    res = json.loads(out.read_text())
    assert sorted(p["file"].rsplit("/", 1)[-1] for p in res["predictions"]) == good
    assert len(res["failures"]) == len(bad) + 1
    for p in res["predictions"]:
        probs = [t["probability"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert all(t["label"] == CLASSES[t["index"]] for t in p["top"])
    assert f"classified {len(good)} of {len(good) + len(bad) + 1}" in captured.err


def test_probabilities_match_independent_preprocessing(tmp_path, checkpoint, capsys):
    out = tmp_path / "r.csv"
    path = tmp_path / "rgb.png"  # at the model's size: no resampling to disagree about
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(path)
    assert main(["-q", "predict", "--checkpoint", str(checkpoint), str(path), "--topk", "10",
                 "--out", str(out)]) == 0  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    got = {int(r["class_index"]): float(r["probability"]) for r in rows}
    model = vitlab.load_checkpoint(checkpoint)
    tf = T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    with torch.no_grad():
        ref = model(tf(Image.open(path).convert("RGB"))[None]).softmax(-1)[0]
    assert len(got) == 10
    for c, q in got.items():
        assert q == pytest.approx(float(ref[c]), abs=1e-5)
    assert f"{path}: class_" in capsys.readouterr().out


def test_explain_writes_rollout_overlays(tmp_path, checkpoint):
    good = _good_images(tmp_path / "in")
    (tmp_path / "more").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "more" / "rgb.png")  # same stem as in/rgb.jpg
    rc = main(["-q", "predict", "--checkpoint", str(checkpoint), str(tmp_path / "in"),
               str(tmp_path / "more"), "--explain", str(tmp_path / "why")])  # fmt: skip
    assert rc == 0
    pngs = sorted(p.name for p in (tmp_path / "why").iterdir())
    assert len(pngs) == len(good) + 1 and "rgb-2.png" in pngs
    with Image.open(tmp_path / "why" / pngs[0]) as img:
        assert img.format == "PNG"


def test_user_mistakes_are_one_line_errors(tmp_path, checkpoint, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    assert main(["-q", "predict", "--checkpoint", str(tmp_path / "no.safetensors"), str(img)]) == 2
    assert main(["-q", "predict", "--checkpoint", str(checkpoint), str(img), "--out", "r.txt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("vitlab predict: error:") for line in err)
    assert "does not exist" in err[0] and ".json or .csv" in err[1]


def test_help_explains_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "exit status" in out and "--explain" in out and "examples:" in out


def test_cnn_checkpoint_predicts_but_cannot_explain(tmp_path, capsys):
    model = vitlab.create_model(
        "bit_r50x1", in_chans=1, num_classes=10, img_size=28, layers=(1, 1), stem_width=32
    )
    ckpt = vitlab.save_checkpoint(model, tmp_path / "cnn.safetensors")
    Image.new("L", (28, 28)).save(tmp_path / "a.png")
    args = ["-q", "predict", "--checkpoint", str(ckpt), str(tmp_path / "a.png")]
    assert main(args) == 0
    assert main([*args, "--explain", str(tmp_path / "why")]) == 2
    assert main(["-q", "inspect", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "ResNetV2 has no attention" in err and "not a Vision Transformer" in err
    assert not (tmp_path / "why").exists()


@pytest.mark.parametrize(("device", "needle"), [("gpu", "is not a device"), ("cuda", "no CUDA")])
@pytest.mark.parametrize("cmd", ["predict", "inspect", "eval"])
def test_devices_are_checked_in_one_line(tmp_path, checkpoint, capsys, monkeypatch, cmd, device,
                                         needle):  # fmt: skip
    """`--device cuda` without a GPU used to end in "RuntimeError: Found no NVIDIA driver"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    rest = {"predict": [str(img)], "inspect": ["--out", str(tmp_path / "m"), "--images", str(img)],
            "eval": ["--data", "synthetic"]}[cmd]  # fmt: skip
    assert main([cmd, "--checkpoint", str(checkpoint), *rest, "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_a_one_channel_model_says_photos_become_grey(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="vitlab")
    grey = vitlab.create_model("vit_test", in_chans=1)
    path = vitlab.save_checkpoint(grey, tmp_path / "g.safetensors")
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (200, 0, 0)).save(img)
    assert main(["predict", "--checkpoint", str(path), str(img)]) == 0
    assert any("converted to greyscale" in r.getMessage() for r in caplog.records)


def test_skipped_files_are_reported_on_their_own_line(tmp_path, checkpoint, capsys):
    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (8, 8)).save(good)
    bad.write_bytes(b"junk")
    assert main(["predict", "--checkpoint", str(checkpoint), str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.replace("\r", "\n").splitlines() if "predict: skipped" in x)
    assert line.startswith("vitlab predict: skipped")  # not glued to the progress bar
