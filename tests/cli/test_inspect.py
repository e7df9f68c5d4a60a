import pytest
from PIL import Image

import vitlab
from tests.conftest import perturb_
from vitlab.cli.main import main


@pytest.fixture
def checkpoint(tmp_path):
    model = perturb_(vitlab.create_model("vit_test"), 0.3)
    return vitlab.save_checkpoint(model, tmp_path / "m.safetensors")


def test_inspect_sample_photos(tmp_path, checkpoint, capsys):
    out = tmp_path / "maps"
    assert main(["-q", "inspect", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    for name in ("astronaut", "coffee", "chelsea"):
        assert "rollout_" in html and name in html
        assert len(list(out.glob(f"*_{name}.png"))) == 2
    assert "open" in capsys.readouterr().err


def test_inspect_own_images_block_heads_and_resolution(tmp_path, checkpoint, capsys):
    Image.new("RGB", (60, 40), "red").save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"")
    out = tmp_path / "maps"
    images = [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    rc = main(["-q", "inspect", "--checkpoint", str(checkpoint), "--images", *images,
               "--out", str(out), "--block", "0", "--head", "1", "--img-size", "48"])  # fmt: skip
    assert rc == 1  # one image could not be read
    assert "b.jpg: empty file" in capsys.readouterr().err
    assert (out / "heads_block0_00_a.png").exists() and (out / "rollout_00_a.png").exists()
    assert "48 px input" in (out / "index.html").read_text()


def test_inspect_bad_block_is_a_one_line_error(tmp_path, checkpoint, capsys):
    rc = main(["inspect", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--block", "9"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vitlab inspect: error: block 9 does not exist")


def test_inspect_dataset_images_one_per_class_first(tmp_path, capsys):
    model = vitlab.create_model("vit_test", img_size=16, patch_size=4, in_chans=1, num_classes=4)
    ckpt = vitlab.save_checkpoint(model, tmp_path / "m.safetensors")
    out = tmp_path / "maps"
    rc = main(["-q", "inspect", "--checkpoint", str(ckpt), "--data", "synthetic",
               "--num-images", "5", "--out", str(out)])  # fmt: skip
    assert rc == 0
    rollouts = sorted(p.name for p in out.glob("rollout_*.png"))
    assert len(rollouts) == 5
    from vitlab.data.datasets import load_data

    splits = load_data("synthetic")
    labels = splits.test.labels.tolist()
    firsts = [labels.index(c) for c in range(len(splits.class_names))]
    expected = [*firsts, min(set(range(len(labels))) - set(firsts))]
    names = [f"test{i}_{splits.class_names[labels[i]]}".replace(" ", "_") for i in expected]
    assert rollouts == sorted(f"rollout_{k:02d}_{n}.png" for k, n in enumerate(names))


def test_images_and_data_are_exclusive(tmp_path, checkpoint, capsys):
    code = main(["inspect", "--checkpoint", str(checkpoint), "--out", str(tmp_path),
                 "--images", "a.png", "--data", "digits"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not allowed with" in err[0]
