import pytest

from vitlab.errors import ConfigError
from vitlab.models.registry import get_config
from vitlab.train.config import (
    TrainConfig,
    build_config,
    list_presets,
    load_config,
    save_config,
)

PRESETS = ["fashion_mnist_vit", "fashion_mnist_vit_long", "fashion_mnist_bit"]
PRESETS += ["imagenet_vit_b16", "finetune_paper", "fashion_mnist_deit"]


def test_every_promised_preset_exists_and_builds():
    assert set(PRESETS) <= set(list_presets())
    for name in PRESETS:
        cfg = build_config(name)
        size = {"img_size": cfg.img_size} if cfg.img_size else {}
        get_config(cfg.model, **cfg.model_args, **size)  # the model and its overrides are valid


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lrr": 1.0}, "unknown config key(s): lrr (did you mean lr?)"),
        ({"lr": "fast"}, "lr must be float, got 'fast'"),
        ({"epochs": True}, "epochs must be float"),
        ({"optimizer": "adam"}, "optimizer='adam' is not one of 'adamw', 'sgd'"),
        ({"betas": [0.9]}, "betas must be a list of 2 numbers"),
        ({"batch_size": 30, "accum_steps": 4}, "batch_size 30 must divide by accum_steps 4"),
        ({"eval_every": 0}, "eval_every must be >= 1"),
        ({"log_every": 0}, "log_every must be >= 1"),
        ({"ckpt_every": -1}, "ckpt_every must be >= 0"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"hflip": 1.5}, "hflip must be in [0, 1]"),
        ({"random_erase": -0.1}, "random_erase must be in [0, 1]"),
        ({"pad_crop": -2}, "pad_crop must be >= 0"),
        ({"randaug_m": 31}, "randaug_m must be in [0, 30]"),
        ({"mixup": -1.0}, "mixup and cutmix must be >= 0"),
        ({"lr": 1e-3, "min_lr": 1e-2}, "min_lr must be in [0, lr]"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"betas": [0.9, 1.0]}, "betas must each be in [0, 1)"),
        ({"momentum": 1.0}, "momentum must be in [0, 1)"),
        ({"warmup_epochs": -1}, "warmup must be >= 0"),
        ({"clip_grad": 0.0}, "clip_grad must be > 0"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"workers": -1}, "workers must be >= 0"),
        ({"img_size": 0}, "img_size must be >= 1"),
    ],
)
def test_config_errors_say_what_is_wrong(overrides, message):
    with pytest.raises(ConfigError) as e:
        build_config(None, overrides)
    assert message in str(e.value)


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
