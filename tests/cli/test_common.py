"""The CLI's shared parsing: one `--set` for train, finetune and convert; checkpoint and source
arguments from the registry."""

import argparse

import pytest

from vitlab.cli.common import SOURCE_CHOICES, add_checkpoint_args, parse_set
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
