import io
import json
import sys
import tarfile

import pytest
import torch
from PIL import Image

from vitlab.data.datasets import DatasetError, load_data
from vitlab.data.transforms import AugConfig
from vitlab.data.wds import ShardStream
from vitlab.train.config import TrainConfig
from vitlab.train.run import fit

pytest.importorskip("webdataset")

EVAL = AugConfig(img_size=8)


def _png(index, label):
    """A flat 8x8 image whose red channel encodes the sample index and green its label."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10 * index, 60 * label, 128)).save(buf, "PNG")
    return buf.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder, prefix, n_shards, per_shard, classes=3, bad=(), labels=True, start=0):
    """Shards PREFIX-000000.tar ... of PNG + .cls samples; sample indices in `bad` get bytes
    that are not an image. Returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    i = start
    for s in range(n_shards):
        with tarfile.open(folder / f"{prefix}-{s:06d}.tar", "w") as tar:
            for _ in range(per_shard):
                key = f"sample{i:05d}"
                _add(tar, f"{key}.png", b"not an image" if i in bad else _png(i, i % classes))
                if labels:
                    _add(tar, f"{key}.cls", str(i % classes).encode())
                i += 1
    return str(folder / f"{prefix}-{{000000..{n_shards - 1:06d}}}.tar")


def _decoded(batches):
    """(index, label) of every real sample in the batches, and the skipped count."""
    out, skipped = [], 0
    for x, y, skip in batches:
        skipped += skip
        for img, label in zip(x, y):
            if label >= 0:  # -1: padding
                assert abs(int(img[1].float().mean()) - 60 * int(label)) <= 1  # label matches
                out.append((round(float(img[0].float().mean()) / 10), int(label)))
    return out, skipped


def test_stream_yields_every_sample_once_with_its_label(tmp_path):
    data = load_data("wds:" + write_shards(tmp_path, "train", 3, 5))
    assert len(data.train) == 15 and data.class_names == ("0", "1", "2")
    assert data.val is None and data.test is None and data.in_chans == 3
    stream = ShardStream(data.train, EVAL, batch=4)
    got, skipped = _decoded(stream)
    assert sorted(got) == [(i, i % 3) for i in range(15)] and skipped == 0
    assert len(stream) == 4  # ceil(15 / 4): batches run across shard boundaries


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    data = load_data("wds:" + write_shards(tmp_path, "train", 2, 4, bad={5}))
    assert len(data.train) == 8  # counted at start: the bad one still takes a slot
    got, skipped = _decoded(ShardStream(data.train, EVAL, batch=3))
    assert skipped == 1 and sorted(i for i, _ in got) == [0, 1, 2, 3, 4, 6, 7]


def test_a_truncated_shard_is_read_up_to_the_break(tmp_path):
    pattern = write_shards(tmp_path, "train", 2, 4)
    last = tmp_path / "train-000001.tar"
    last.write_bytes(last.read_bytes()[:2500])  # cut inside its third member
    data = load_data("wds:" + pattern)
    assert 4 < len(data.train) < 8
    got, _ = _decoded(ShardStream(data.train, EVAL, batch=3))
    assert {i for i, _ in got} >= {0, 1, 2, 3, 4}


def test_split_by_node_gives_each_process_its_own_shards(tmp_path):
    shards = load_data("wds:" + write_shards(tmp_path, "train", 5, 3)).train
    seen = []
    for rank in (0, 1):
        stream = ShardStream(shards, EVAL, batch=2, rank=rank, world=2)
        batches = list(stream)
        assert len(batches) == len(stream) == 5  # rank 0: 9 samples, rank 1: 6 + 2 padding
        seen.append({i for i, _ in _decoded(batches)[0]})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(15))
    for rank in (0, 1):  # training: the epoch's shards are split the same way
        aug = AugConfig(img_size=8, train=True)
        stream = ShardStream(shards, aug, 2, rank=rank, world=2, train=True, steps_per_epoch=5)
        seen[rank] = {i // 3 for i, _ in _decoded(list(stream))[0]}  # the shards it read
    assert not seen[0] & seen[1] and len(seen[0]) == 3 and len(seen[1]) == 2


def test_training_stream_is_shuffled_sized_and_repeatable(tmp_path):
    shards = load_data("wds:" + write_shards(tmp_path, "train", 2, 6)).train
    aug = AugConfig(img_size=8, train=True)
    stream = ShardStream(shards, aug, batch=4, seed=1, train=True, steps_per_epoch=3)
    stream.set_epoch(2)
    first = list(stream)
    assert len(first) == 3 and all(len(x) == 4 for x, _, _ in first)
    order = [i for i, _ in _decoded(first)[0]]
    assert sorted(order) == list(range(12)) and order != list(range(12))  # one shuffled pass
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, stream))  # same epoch, same data
    stream.set_epoch(2, skip=1)  # a mid-epoch resume: the rest of the epoch's steps
    assert len(list(stream)) == len(stream) == 2


def _fit_cfg(tmp_path, data, **kw):
    base = dict(model="vit_test", model_args={"patch_size": 4}, img_size=16, data=data,
                epochs=1, batch_size=8, lr=3e-3, out=str(tmp_path / "run"))  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_fit_trains_from_shards_and_reports(tmp_path):
    write_shards(tmp_path, "train", 2, 12, classes=2, bad={3})
    write_shards(tmp_path, "val", 1, 8, classes=2, start=24)
    (tmp_path / "classes.json").write_text(json.dumps({"cat": 0, "dog": 1}))
    data = "wds:" + str(tmp_path / "{split}-{000000..000001}.tar")  # one val shard exists
    result = fit(_fit_cfg(tmp_path, data))
    report = result.report
    assert report["split"] == "val" and report["n"] == 8 and report["steps"] == 3
    assert set(report["per_class"]) == {"cat", "dog"} and report["skipped"] == 1
    assert {"report.json", "last.safetensors", "metrics.jsonl"} <= {
        p.name for p in result.run_dir.iterdir()
    }


def test_missing_shards_name_the_pattern_and_the_layout(tmp_path):
    pattern = str(tmp_path / "train-{000000..000003}.tar")
    with pytest.raises(DatasetError) as e:
        load_data("wds:" + pattern)
    assert pattern in str(e.value) and "KEY.cls" in str(e.value)
    write_shards(tmp_path, "train", 3, 2)  # 000003 is still missing
    with pytest.raises(DatasetError, match="1 of 4 shards do not exist"):
        load_data("wds:" + pattern)
    with pytest.raises(DatasetError, match="shard pattern"):
        load_data("wds:")


def test_shards_without_labels_are_a_clear_error(tmp_path):
    pattern = write_shards(tmp_path, "train", 1, 3, labels=False)
    with pytest.raises(DatasetError) as e:
        load_data("wds:" + pattern)
    assert "no .cls labels" in str(e.value) and "found .png" in str(e.value)
    assert pattern in str(e.value)


def test_val_split_without_val_shards_says_how_to_add_them(tmp_path):
    with pytest.raises(DatasetError, match=r"\{split\}"):
        load_data("wds:" + write_shards(tmp_path, "train", 1, 3), val_split=0.2)


def test_without_webdataset_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(DatasetError, match=r"pip install 'vitlab\[wds\]'"):
        load_data("wds:" + str(tmp_path / "train-{0..1}.tar"))


def test_workers_share_a_process_without_losing_or_repeating_samples(tmp_path):
    from vitlab.data.loader import make_loader

    shards = load_data("wds:" + write_shards(tmp_path, "train", 3, 4)).train
    evaluation = ShardStream(shards, EVAL, batch=3, rank=1, world=2, workers=2)
    batches = list(make_loader(evaluation, None, 2))
    assert len(batches) == len(evaluation) == 4  # 2 of shard 1 + 2 padding; rank 0: 2 + 2
    assert sorted(_decoded(batches)[0]) == [(i, i % 3) for i in range(4, 8)]
    aug = AugConfig(img_size=8, train=True)
    train = ShardStream(shards, aug, 2, train=True, steps_per_epoch=5, workers=2)
    assert len(list(make_loader(train, None, 2))) == 5  # the epoch's steps, split over workers


def test_shards_behind_a_pipe_are_streamed_to_count_them(tmp_path):
    pattern = write_shards(tmp_path, "train", 2, 3)
    data = load_data("wds:pipe:cat " + pattern)
    assert len(data.train) == 6 and data.train.urls[0].startswith("pipe:cat ")
    assert sorted(_decoded(ShardStream(data.train, EVAL, batch=4))[0])[-1] == (5, 2)


@pytest.mark.slow
def test_torchrun_fsdp_steps_and_evaluates_together_on_uneven_shards(tmp_path):
    """Uneven shards and one validation shard for two processes: both must still run the same
    number of training steps and evaluation batches (FSDP hangs otherwise)."""
    import os
    import subprocess

    for s, n in enumerate((10, 6, 8)):
        write_shards(tmp_path / "d", f"part{s}", 1, n, classes=2, start=100 * s)
        (tmp_path / "d" / f"part{s}-000000.tar").rename(tmp_path / "d" / f"train-{s:06d}.tar")
    write_shards(tmp_path / "d", "val", 1, 5, classes=2, start=400)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "vitlab",
           "-q", "train", "--model", "vit_test", "--img-size", "16", "--batch-size", "8",
           "--epochs", "2", "--strategy", "fsdp", "--workers", "1", "--out", str(tmp_path / "run"),
           "--data", "wds:" + str(tmp_path / "d" / "{split}-{000000..000002}.tar"),
           "--set", "model_args.patch_size=4"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["steps"] == 6 and report["n"] == 5  # 24 samples / batch 8, 2 epochs


def test_inspect_takes_the_first_image_of_each_class_from_shards(tmp_path):
    from vitlab.inspect.samples import dataset_images

    pattern = write_shards(tmp_path / "d", "test", 2, 4, classes=3, bad={0})
    got = dataset_images(f"wds:{pattern}", n=4)
    labels = [int(name.rsplit("_", 1)[-1]) for name, _ in got]
    assert labels[:3] == [0, 1, 2]  # one per class first (sample 0 is unreadable: skipped)
    assert len(got) == 4 and all(im.mode == "RGB" for _, im in got)
    assert got[0][0] == "train_sample00003_0"  # no {split}: the training shards


def test_pretraining_streams_shards_without_labels(tmp_path):
    """Shards of images only are refused for training (above) and read for pre-training."""
    write_shards(tmp_path, "train", 2, 8, labels=False)
    write_shards(tmp_path, "val", 1, 4, labels=False, start=16)
    data = "wds:" + str(tmp_path / "{split}-{000000..000001}.tar")
    splits = load_data(data, labelled=False)
    assert splits.class_names == ("unlabelled",) and len(splits.train) == 16
    result = fit(_fit_cfg(tmp_path, data, objective="mae"))
    assert result.report["objective"] == "mae" and result.report["val_loss"] > 0
    assert result.report["steps"] == 2 and result.report["skipped"] == 0
