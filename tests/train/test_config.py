import pytest

from vitlab.errors import ConfigError
from vitlab.models.registry import get_config
from vitlab.train.config import (
    TrainConfig,
    build_config,
    list_presets,
    load_config,
    parse_set,
    save_config,
)

PRESETS = ["fashion_mnist_vit", "fashion_mnist_vit_long", "fashion_mnist_bit"]
PRESETS += ["imagenet_vit_b16", "finetune_paper"]


def test_every_promised_preset_exists_and_builds():
    assert set(PRESETS) <= set(list_presets())
    for name in PRESETS:
        cfg = build_config(name)
        size = {"img_size": cfg.img_size} if cfg.img_size else {}
        get_config(cfg.model, **cfg.model_args, **size)  # the model and its overrides are valid


def test_set_overrides_parse_yaml_scalars_and_dotted_keys():
    got = parse_set(["lr=3e-3", "model_args.depth=4", "clip_grad=null", "betas=[0.9, 0.95]"])
    assert got == {"lr": 3e-3, "model_args": {"depth": 4}, "clip_grad": None, "betas": [0.9, 0.95]}
    cfg = build_config("fashion_mnist_vit", got)
    assert cfg.lr == 3e-3 and cfg.clip_grad is None and cfg.betas == (0.9, 0.95)
    preset = build_config("fashion_mnist_vit")
    assert cfg.model_args == {**preset.model_args, "depth": 4}  # merged, not replaced


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lrr": 1.0}, "unknown config key(s): lrr (did you mean lr?)"),
        ({"lr": "fast"}, "lr must be float, got 'fast'"),
        ({"epochs": True}, "epochs must be float"),
        ({"optimizer": "adam"}, "optimizer='adam' is not one of 'adamw', 'sgd'"),
        ({"betas": [0.9]}, "betas must be a list of 2 numbers"),
        ({"batch_size": 30, "accum_steps": 4}, "batch_size must divide by accum_steps"),
    ],
)
def test_config_errors_say_what_is_wrong(overrides, message):
    with pytest.raises(ConfigError) as e:
        build_config(None, overrides)
    assert message in str(e.value)


def test_set_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="--set takes key=value"):
        parse_set(["lr"])


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="fashion_mnist_vit"):
        build_config("fashion_mnist_vti")


def test_saved_config_round_trips(tmp_path):
    cfg = build_config("fashion_mnist_vit_long", {"lr": 1e-3})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert build_config(str(tmp_path / "config.yaml")) == cfg  # a YAML path works as --config


def test_ints_are_accepted_for_floats():
    assert TrainConfig(lr=1, epochs=2).lr == 1.0
