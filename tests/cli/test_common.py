"""The CLI's shared parsing: one `--set` for train, finetune and convert; checkpoint and source
arguments from the registry."""

import argparse

import pytest

from vitlab.cli.common import SOURCE_CHOICES, add_checkpoint_args, number, parse_set
from vitlab.errors import ConfigError
from vitlab.train.config import build_config


def test_set_overrides_parse_yaml_scalars_and_dotted_keys():
    got = parse_set(["lr=3e-3", "model_args.depth=4", "clip_grad=null", "betas=[0.9, 0.95]"])
    assert got == {"lr": 3e-3, "model_args": {"depth": 4}, "clip_grad": None, "betas": [0.9, 0.95]}
    cfg = build_config("fashion_mnist_vit", got)
    assert cfg.lr == 3e-3 and cfg.clip_grad is None and cfg.betas == (0.9, 0.95)
    preset = build_config("fashion_mnist_vit")
    assert cfg.model_args == {**preset.model_args, "depth": 4}  # merged, not replaced


def test_set_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="--set takes key=value"):
        parse_set(["lr"])


def test_floats_in_any_notation_and_flat_keys_for_model_fields():
    """`vitlab convert --set layer_norm_eps=1e-6` used to store the string '1e-6' (its own
    parser skipped the float handling) and the forward raised TypeError."""
    assert parse_set(["layer_norm_eps=1e-6", "num_heads=12"], nested=False) == {
        "layer_norm_eps": 1e-6,
        "num_heads": 12,
    }
    with pytest.raises(ConfigError, match="not a field"):
        parse_set(["model_args.depth=2"], nested=False)


def test_source_choices_come_from_the_registry():
    from vitlab.weights.checkpoint import SOURCES

    assert ["auto", *SOURCES] == SOURCE_CHOICES
    p = argparse.ArgumentParser()
    add_checkpoint_args(p)
    assert p.parse_args(["--checkpoint", "m", "--source", "google"]).source == "google"


def _options(command):
    from vitlab.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {o: a for a in sub.choices[command]._actions for o in a.option_strings}


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_training_flags_are_the_config_fields(command):
    """One flag per entry of train.config.FLAGS, its type and choices from the TrainConfig field
    (no range of its own: TrainConfig checks the value), and the shared data group."""
    import typing

    from vitlab.train.config import DATA_FIELDS, FLAGS, TrainConfig

    options = _options(command)
    hints = typing.get_type_hints(TrainConfig)
    for name in (*FLAGS, *DATA_FIELDS):
        action = options["--" + name.replace("_", "-")]
        assert action.dest == name
        if typing.get_origin(hints[name]) is typing.Literal:
            assert action.choices == list(typing.get_args(hints[name]))
    assert options["--batch-size"].type("0") == 0  # the range is TrainConfig's
    assert options["--compile"].default is None


def test_the_data_group_is_declared_once():
    helps = {c: _options(c)["--data-root"].help for c in ("train", "finetune", "eval")}
    assert len(set(helps.values())) == 1
    assert _options("inspect")["--data-root"].type is _options("train")["--data-root"].type


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--batch-size", "0"], "--batch-size 0: batch_size must be >= 1"),
        (["--img-size", "-4"], "--img-size -4: img_size must be >= 1"),
        (["--lr", "0"], "--lr 0.0: lr must be > 0"),
        (["--workers", "-1"], "--workers -1: workers must be >= 0"),
    ],
)
def test_a_flag_out_of_range_is_said_about_the_flag_once(flags, said, tmp_path, capsys):
    from vitlab.cli.main import main

    assert main(["train", "--out", str(tmp_path / "run"), *flags]) == 2
    assert capsys.readouterr().err.strip() == f"vitlab train: error: {said}"


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN"])
def test_numbers_are_finite(text):
    """nan passes every range check (nan < 0 is false), and `--lr inf` trained silently."""
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number >= 0"):
        number(float, 0)(text)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--lr", "nan"], "argument --lr: expected a number, got nan"),
        (["--set", "lr=inf"], "lr must be a finite number, got 'inf'"),
    ],
)
def test_a_config_float_is_finite_through_the_cli(given, message, tmp_path, capsys):
    from vitlab.cli.main import main

    argv = ["train", "--model", "vit_test", "--data", "synthetic", "--steps", "1"]
    code = main([*argv, *given, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "run" / "last.safetensors").exists()
