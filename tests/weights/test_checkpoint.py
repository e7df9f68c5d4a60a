import pytest
import torch
from safetensors.torch import save_file

import vitlab
from tests.conftest import perturb_
from vitlab.errors import CheckpointError


def _model(**kw):
    return perturb_(vitlab.create_model("vit_test", **kw)).eval()


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"pool": "gap", "pos_embed": "sincos", "in_chans": 1},
        {"representation_size": 16, "act": "gelu_tanh"},
    ],
)
def test_round_trip_is_bit_exact(tmp_path, kw):
    names = tuple(f"class {i}" for i in range(10))
    m = _model(class_names=names, **kw)
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    back = vitlab.load_checkpoint(path)
    assert back.cfg.class_names == names
    assert back.cfg.to_dict() | {"extra": {}} == m.cfg.to_dict() | {"extra": {}}
    sd, sd2 = m.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    x = torch.randn(2, m.cfg.in_chans, 32, 32)
    assert torch.equal(m(x), back(x))
    assert back.cfg.extra["source"] == "vitlab"


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    m = _model()
    vitlab.save_checkpoint(m, tmp_path / "a.safetensors")
    vitlab.save_checkpoint(m, tmp_path / "a.safetensors")  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_overrides_new_head_and_resolution(tmp_path):
    m = _model()
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    ft = vitlab.load_checkpoint(path, num_classes=3, img_size=64)
    assert ft.cfg.num_classes == 3 and ft.cfg.img_size == 64
    assert torch.count_nonzero(ft.head.weight) == 0  # zero-initialised new head
    assert ft.pos_embed.shape == (1, 65, 32)
    torch.testing.assert_close(ft.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight)


def test_unknown_layout_lists_what_was_expected(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="unknown weight layout.*timm") as e:
        vitlab.load_checkpoint(path)
    assert "foo.weight" in str(e.value)


def test_mismatch_lists_missing_unexpected_and_misshapen(tmp_path):
    m = _model()
    sd = m.state_dict()
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(5, 32)
    path = tmp_path / "t.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        vitlab.load_checkpoint(path, model="vit_test", source="timm")
    msg = str(e.value)
    assert "missing: norm.weight" in msg
    assert "unexpected: extra.weight" in msg
    assert "misshapen: blocks.0.mlp.fc1.weight (5, 32) vs model (64, 32)" in msg


def test_saved_files_get_the_usual_permissions(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")  # what any other program would create here
    path = vitlab.save_checkpoint(_model(), tmp_path / "m.safetensors")
    assert path.stat().st_mode == plain.stat().st_mode


# ----------------------------------------------------------------------- the source registry
def test_the_registry_lists_every_source_in_detection_order():
    from vitlab.weights import formats
    from vitlab.weights.checkpoint import SOURCES

    assert tuple(SOURCES) == formats.SOURCE_NAMES == ("vitlab", "timm", "google", "hf",
                                                      "torchvision")  # fmt: skip
    resample = {name: s.resample for name, s in SOURCES.items()}
    assert resample == {"vitlab": "bicubic", "timm": "timm", "google": "google", "hf": "hf",
                        "torchvision": "torchvision"}  # fmt: skip


def test_a_file_two_sources_claim_is_refused_until_the_source_is_given(tmp_path):
    """timm's and torchvision's keys in one file: first-match-wins used to take timm silently."""
    timm_sd = vitlab.save_checkpoint(_model(), tmp_path / "t.safetensors", format="timm")
    tv_sd = vitlab.save_checkpoint(_model(), tmp_path / "v.pth", format="torchvision")
    from safetensors.torch import load_file

    both = {**load_file(timm_sd), **torch.load(tv_sd, weights_only=True)}
    save_file(both, str(tmp_path / "both.safetensors"))
    with pytest.raises(CheckpointError, match="fits the layouts of timm and torchvision"):
        vitlab.load_checkpoint(tmp_path / "both.safetensors")


def test_vitlab_files_are_not_also_claimed_by_timm(tmp_path):
    """vitlab's own files use timm's key names; only the native source claims them."""
    path = vitlab.save_checkpoint(_model(), tmp_path / "m.safetensors")
    assert vitlab.load_checkpoint(path).cfg.extra["source"] == "vitlab"


# ------------------------------------------------------------------------------ loud loading
def test_overrides_for_an_existing_module_are_an_error_naming_them(tmp_path):
    """load_checkpoint(path, <module>, img_size=64, depth=7) used to ignore both overrides."""
    path = vitlab.save_checkpoint(_model(), tmp_path / "m.safetensors")
    target = vitlab.create_model("vit_test")
    with pytest.raises(vitlab.ConfigError, match="cannot apply depth, img_size"):
        vitlab.load_checkpoint(path, target, img_size=64, depth=7)
    loaded = vitlab.load_checkpoint(path, target)  # without overrides it loads in place
    assert loaded is target


def test_save_checkpoint_with_class_names_leaves_the_model_alone(tmp_path):
    m = _model()
    before = m.cfg
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors", class_names="abcdefghij")
    assert m.cfg is before and m.cfg.class_names is None
    assert vitlab.load_checkpoint(path).cfg.class_names == tuple("abcdefghij")


def test_dont_load_keeps_the_initial_values_of_matching_parameters(tmp_path):
    """big_vision's dont_load: regexes (matched whole) of parameters to leave as initialised."""
    m = _model()
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    torch.manual_seed(1)
    fresh = vitlab.create_model("vit_test")
    torch.manual_seed(1)
    loaded = vitlab.load_checkpoint(path, dont_load=["pos_embed", r"blocks\.1\..*"])
    own, theirs, init = loaded.state_dict(), m.state_dict(), fresh.state_dict()
    for k in own:
        kept = k == "pos_embed" or k.startswith("blocks.1.")
        assert torch.equal(own[k], init[k] if kept else theirs[k]), k


@pytest.mark.parametrize(("pattern", "needle"), [("pos_embedd", "matches no"), ("(", "regex")])
def test_a_dont_load_pattern_that_matches_nothing_is_a_typo(tmp_path, pattern, needle):
    path = vitlab.save_checkpoint(_model(), tmp_path / "m.safetensors")
    with pytest.raises(vitlab.ConfigError, match=needle):
        vitlab.load_checkpoint(path, dont_load=[pattern])
