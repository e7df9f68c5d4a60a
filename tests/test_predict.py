"""Batch inference over files (vitlab.predict): a result never depends on the batch it ran in,
bad files are reported without stopping the others, and results are written as CSV or JSON."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

import vitlab
from tests.conftest import perturb_
from vitlab.predict import predict_files


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    return [*paths[:2], bad, *paths[2:]]


def test_results_do_not_depend_on_the_batch(files):
    model = perturb_(vitlab.create_model("vit_test", num_classes=4)).eval()
    one = predict_files(model, files, batch_size=1, progress=False)
    many = predict_files(model, files, batch_size=4, progress=False)
    assert [p.file for p in one.predictions] == [p.file for p in many.predictions]
    for a, b in zip(one.predictions, many.predictions):
        assert [c for c, _, _ in a.top] == [c for c, _, _ in b.top]
        np.testing.assert_allclose([q for *_, q in a.top], [q for *_, q in b.top], atol=1e-5)
    assert [f.file for f in one.failures] == [str(files[2])]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_results_are_written_with_the_failures(files, tmp_path, suffix):
    model = perturb_(vitlab.create_model("vit_test", num_classes=4)).eval()
    out = tmp_path / f"results{suffix}"
    res = predict_files(model, files, topk=2, out=out, progress=False)
    if suffix == ".json":
        data = json.loads(out.read_text())
        assert len(data["predictions"]) == 5 and len(data["predictions"][0]["top"]) == 2
        assert data["failures"][0]["file"] == str(files[2])
    else:
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 5 * 2 + 1 and rows[-1]["error"]
    assert len(res.predictions) == 5


def test_a_headless_model_has_nothing_to_predict(files):
    with pytest.raises(vitlab.VitlabError, match="no classifier head"):
        predict_files(vitlab.create_model("vit_test", num_classes=0), files, progress=False)


def test_bf16_predictions_agree_with_fp32(files):
    model = perturb_(vitlab.create_model("vit_test", num_classes=4), 0.2).eval()
    fp32 = predict_files(model, files, progress=False)
    bf16 = predict_files(model, files, progress=False, precision="bf16")
    assert len(bf16.predictions) == len(fp32.predictions) == 5
    ran = [q for p in bf16.predictions for *_, q in p.top]
    assert ran != [q for p in fp32.predictions for *_, q in p.top]  # bf16 did run: rounded
    for a, b in zip(fp32.predictions, bf16.predictions):
        pa = dict((c, q) for c, _, q in a.top)
        pb = dict((c, q) for c, _, q in b.top)
        assert max(abs(pa[c] - pb[c]) for c in pa) < 0.02  # probabilities
        if a.top[0][2] - a.top[1][2] > 0.04:
            assert a.top[0][0] == b.top[0][0]
