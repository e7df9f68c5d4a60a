"""Model soups (Wortsman et al. 2022): the uniform average, the greedy recipe, and the
refusals that come before any evaluation."""

import copy
import json

import pytest
import torch

import vitlab
from tests.conftest import perturb_
from vitlab import soup
from vitlab.errors import ConfigError
from vitlab.weights.checkpoint import INIT_HASH, record_init, weights_sha256

NAMES = tuple(f"pattern {i}" for i in range(4))  # the synthetic set's classes


def _start(**kw):
    """A 'pre-trained' vit_test with its hash recorded, as a fine-tuning run starts it."""
    model = perturb_(vitlab.create_model("vit_test", num_classes=4, class_names=NAMES, **kw))
    record_init(model)
    return model


def _finetune(start, scale=0.02, seed=0):
    """A copy of `start` moved a little, as a fine-tune of it (the start's hash kept)."""
    torch.manual_seed(seed)
    return perturb_(copy.deepcopy(start), scale)


def _save(model, path):
    return vitlab.save_checkpoint(model, path)


def test_a_uniform_soup_of_two_identical_checkpoints_is_the_checkpoint(tmp_path):
    model = _finetune(_start())
    path = _save(model, tmp_path / "a.safetensors")
    mixed = soup.uniform_soup([path, path])
    want = model.state_dict()
    assert mixed.state_dict().keys() == want.keys()
    for k, v in mixed.state_dict().items():
        assert v.dtype == want[k].dtype and torch.equal(v, want[k]), k
    assert (
        mixed.cfg.class_names == NAMES and mixed.cfg.extra[INIT_HASH] == model.cfg.extra[INIT_HASH]
    )


def test_a_uniform_soup_is_the_mean_of_every_tensor(tmp_path):
    start = _start()
    a, b, c = (_finetune(start, seed=s) for s in range(3))
    mixed = soup.uniform_soup([a, b, c])
    for k, v in mixed.state_dict().items():
        mean = (a.state_dict()[k] + b.state_dict()[k] + c.state_dict()[k]) / 3
        torch.testing.assert_close(v, mean, rtol=0, atol=1e-6)


def test_drop_rates_may_differ_and_the_first_ingredients_are_the_soups():
    start = _start()
    other = _finetune(start)
    other.cfg.drop_path_rate = 0.1  # training regularisation: the weights are the same shape
    mixed = soup.uniform_soup([_finetune(start), other])
    assert mixed.cfg.drop_path_rate == 0.0


def test_integer_buffers_come_from_the_first_ingredient_and_dtypes_stay():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16), "n": torch.tensor([5])}
    mean = soup.mean_state([a, b])
    assert mean["n"].item() == 3 and mean["n"].dtype == torch.int64
    assert mean["w"].dtype == torch.bfloat16 and mean["w"].tolist() == [2.0, 3.0]


# -------------------------------------------------------------------------------- greedy
def _bias_accuracy(target):
    """A deterministic stand-in for held-out accuracy: higher the closer head.bias[0] is to
    `target`, so an ingredient that moves the soup's mean towards it helps."""

    def accuracy(model):
        return 1.0 - abs(float(model.head.bias[0].detach()) - target)

    return accuracy


def _with_bias(start, value, seed):
    model = _finetune(start, seed=seed)
    with torch.no_grad():
        model.head.bias[0] = value
    return model


def test_the_greedy_soup_keeps_an_ingredient_that_helps_and_drops_one_that_hurts():
    start = _start()
    best = _with_bias(start, 1.0, 0)  # 0.85 alone
    helps = _with_bias(start, 0.6, 1)  # 0.75 alone, but with the best: mean 0.8 -> 0.95
    hurts = _with_bias(start, -5.0, 2)  # far off: any soup with it drops
    g = soup.greedy_soup([hurts, helps, best], _bias_accuracy(0.85))
    assert g.kept == [2, 1]  # the best first, then the one that helped
    assert g.scores == pytest.approx([1 - 5.85, 0.75, 0.85])
    assert g.val_top1 == pytest.approx(0.95)
    assert [(i, kept) for i, _, kept in g.tried] == [(1, True), (0, False)]
    want = soup.average([best, helps]).state_dict()
    for k, v in g.model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)


def test_the_greedy_soup_keeps_an_ingredient_that_leaves_accuracy_as_it_was():
    """The paper's Recipe 1 adds on >=: a tie joins the soup."""
    start = _start()
    a, b = _finetune(start), _finetune(start, seed=1)
    g = soup.greedy_soup([a, b], lambda m: 0.5)
    assert g.kept == [0, 1]


def test_the_greedy_soup_uses_the_scores_given_and_measures_only_the_soups():
    start = _start()
    a, b, c = (_finetune(start, seed=s) for s in range(3))
    calls = []

    def accuracy(model):
        calls.append(model)
        return 0.1  # every soup worse than the best ingredient alone

    g = soup.greedy_soup([a, b, c], accuracy, scores=[0.2, 0.9, 0.5])
    assert g.kept == [1] and len(calls) == 2  # b alone; b+c, then b+a tried
    assert [i for i, _, _ in g.tried] == [2, 0]


# ------------------------------------------------------------------------------- refusals
def _refused(ingredients, match, **kw):
    with pytest.raises(ConfigError, match=match) as e:
        soup.uniform_soup(ingredients, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_ingredients_of_different_starting_weights_are_refused(tmp_path):
    a = _save(_finetune(_start()), tmp_path / "a.safetensors")
    b = _save(_finetune(_start()), tmp_path / "b.safetensors")  # perturbed afresh: another start
    msg = _refused([a, b], "fine-tuned from different starting weights")
    assert str(a) in msg and str(b) in msg and "--allow-different-init" in msg
    assert soup.uniform_soup([a, b], allow_different_init=True) is not None


def test_ingredients_without_a_recorded_start_are_refused(tmp_path):
    scratch = perturb_(vitlab.create_model("vit_test", num_classes=4, class_names=NAMES))
    a = _save(_finetune(_start()), tmp_path / "a.safetensors")
    b = _save(scratch, tmp_path / "scratch.safetensors")
    msg = _refused([a, b], "does not record the weights it was fine-tuned from")
    assert str(b) in msg and "--allow-different-init" in msg
    mixed = soup.uniform_soup([a, b], allow_different_init=True)
    assert INIT_HASH not in mixed.cfg.extra  # the soup has no one start


def test_different_architectures_are_refused():
    a = _start()
    wider = vitlab.create_model("vit_test", num_classes=4, class_names=NAMES, embed_dim=64)
    wider.cfg.extra[INIT_HASH] = a.cfg.extra[INIT_HASH]
    msg = _refused([a, wider], "are different models")
    assert "embed_dim 32 vs 64" in msg


def test_different_class_lists_are_refused():
    a = _start()
    renamed = copy.deepcopy(a)
    renamed.cfg.class_names = ("cat", "dog", "bird", "fish")
    assert "know different classes" in _refused([a, renamed], "know different classes")
    fewer = vitlab.create_model("vit_test", num_classes=3)
    fewer.cfg.extra[INIT_HASH] = a.cfg.extra[INIT_HASH]
    _refused([a, fewer], "know different classes")


def test_an_onnx_graph_is_refused_by_its_name(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"a graph")
    _refused([tmp_path / "m.onnx"], "ONNX graph: a soup averages PyTorch weights")


def test_refusals_come_before_any_evaluation(tmp_path, monkeypatch):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before the ingredients were checked")

    monkeypatch.setattr(soup, "evaluate", no_evaluation)
    a = _save(_finetune(_start()), tmp_path / "a.safetensors")
    b = _save(_finetune(_start()), tmp_path / "b.safetensors")
    with pytest.raises(ConfigError, match="different starting weights"):
        soup.make_soup([a, b], tmp_path / "out", greedy=True, data="synthetic", val_split=0.25)


def test_greedy_needs_data(tmp_path):
    a = _save(_finetune(_start()), tmp_path / "a.safetensors")
    with pytest.raises(ConfigError, match="give --data"):
        soup.make_soup([a, a], tmp_path / "out", greedy=True)


# ------------------------------------------------------------------------------ make_soup
def test_without_data_only_the_uniform_soup_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(soup, "evaluate", lambda *a, **k: pytest.fail("no evaluation asked"))
    start = _start()
    a = _save(_finetune(start), tmp_path / "a.safetensors")
    b = _save(_finetune(start, seed=1), tmp_path / "b.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "soup.json").write_text("{}")  # an earlier soup's report
    report = soup.make_soup([a, b], out)
    assert sorted(p.name for p in out.iterdir()) == ["soup.safetensors"]
    loaded = vitlab.load_checkpoint(report["soup"])
    want = soup.uniform_soup([a, b]).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    assert loaded.cfg.extra["soup_of"] == [str(a), str(b)]


def test_the_held_out_images_come_from_the_runs_config(tmp_path):
    start = _start()
    paths = []
    for i, seed in enumerate((0, 0)):
        run = tmp_path / f"run{i}"
        paths.append(_save(_finetune(start, seed=i), run / "last.safetensors"))
        (run / "config.yaml").write_text(f"val_split: 0.25\nseed: {seed}\n")
    report = soup.make_soup(paths, tmp_path / "out", greedy=True, data="synthetic")
    assert (report["val_split"], report["seed"], report["val_images"]) == (0.25, 0, 64)
    assert report["test_images"] == 64
    saved = json.loads((tmp_path / "out" / "soup.json").read_text())
    assert saved["greedy"]["kept"][0] in (str(p) for p in paths)
    assert set(saved) >= {"ingredients", "uniform", "greedy", "data", "soup"}


def test_runs_that_held_out_different_images_are_refused(tmp_path, caplog):
    start = _start()
    paths = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        paths.append(_save(_finetune(start, seed=seed), run / "last.safetensors"))
        (run / "config.yaml").write_text(f"val_split: 0.25\nseed: {seed}\n")
    with pytest.raises(ConfigError, match="held out different validation images"):
        soup.make_soup(paths, tmp_path / "out", greedy=True, data="synthetic")
    # one hold-out chosen anyway: the run it favours is named
    report = soup.make_soup(paths, tmp_path / "out", greedy=True, data="synthetic",
                            val_split=0.25, seed=0)  # fmt: skip
    assert report["seed"] == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and str(paths[1]) in warned[0] and "favours it" in warned[0]


def test_the_init_hash_leaves_out_the_head_and_sees_every_other_tensor():
    model = _start()
    before = weights_sha256(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    assert weights_sha256(model) == before
    with torch.no_grad():
        model.pos_embed.add_(1e-3)
    assert weights_sha256(model) != before


def test_short_names_tell_the_runs_apart():
    names = ["runs/lr1/last.safetensors", "runs/lr3/last.safetensors"]
    assert soup.short_names(names) == ["lr1/last", "lr3/last"]
    assert soup.short_names(["a.safetensors", "b.safetensors"]) == ["a", "b"]
