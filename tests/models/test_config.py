"""ViTConfig and ResNetConfig are type- and range-checked when built: a bad value is a one-line
ConfigError naming the field; values in other notations (YAML strings, JSON lists) are coerced."""

import json

import pytest

import vitlab
from vitlab.errors import ConfigError
from vitlab.models.config import ResNetConfig, ViTConfig, config_from_dict, config_to_json


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_heads": "abc"}, "num_heads must be int, got 'abc'"),
        ({"depth": 2.0}, "depth must be int, got 2.0"),
        ({"depth": True}, "depth must be int, got True"),
        ({"img_size": "224"}, "img_size must be int, got '224'"),
        ({"layer_norm_eps": "tiny"}, "layer_norm_eps must be float, got 'tiny'"),
        ({"qkv_bias": "yes"}, "qkv_bias must be bool, got 'yes'"),
        ({"act": "relu"}, "act='relu' is not one of 'gelu', 'gelu_tanh'"),
        ({"mean": 0.5}, "mean must be a list of numbers, got 0.5"),
        ({"mean": ["a", 0.5, 0.5]}, "mean must be float, got 'a'"),
        ({"class_names": "abc", "num_classes": 3}, "class_names must be a list of strings"),
        ({"representation_size": "x"}, "representation_size must be int, got 'x'"),
        ({"extra": []}, "extra must be a mapping"),
        ({"backbone": "r50"}, "backbone must be ResNetConfig, got 'r50'"),
        ({"img_size": 0}, "img_size must be >= 1, got 0"),
        ({"patch_size": -1}, "patch_size must be >= 1, got -1"),
        ({"patch_size": 0}, "patch_size must be >= 1, got 0"),
        ({"in_chans": 0}, "in_chans must be >= 1, got 0"),
        ({"num_classes": -1}, "num_classes must be >= 0 (0 means no head), got -1"),
        ({"embed_dim": 0}, "embed_dim must be >= 1, got 0"),
        ({"depth": 0}, "depth must be >= 1, got 0"),
        ({"num_heads": 0}, "num_heads must be >= 1, got 0"),
        ({"num_heads": -12}, "num_heads must be >= 1, got -12"),
        ({"mlp_dim": 0}, "mlp_dim must be >= 1, got 0"),
        ({"representation_size": 0}, "representation_size must be >= 1"),
        ({"layer_norm_eps": 0}, "layer_norm_eps must be > 0, got 0.0"),
        ({"layer_norm_eps": "-1e-6"}, "layer_norm_eps must be > 0, got -1e-06"),
        ({"drop_rate": 1.0}, "drop_rate must be in [0, 1), got 1.0"),
        ({"attn_drop_rate": -0.1}, "attn_drop_rate must be in [0, 1)"),
        ({"drop_path_rate": 1.5}, "drop_path_rate must be in [0, 1)"),
        ({"crop_pct": 0.0}, "crop_pct must be in (0, 1], got 0.0"),
        ({"crop_pct": 1.2}, "crop_pct must be in (0, 1], got 1.2"),
        ({"backbone": {"gn_groups": 0}}, "gn_groups must be >= 1, got 0"),
    ],
)
def test_bad_vit_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        ViTConfig(**overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width_factor": 0}, "width_factor must be >= 1, got 0"),
        ({"width_factor": "2"}, "width_factor must be int, got '2'"),
        ({"stem_width": 0}, "stem_width must be >= 1, got 0"),
        ({"stem_width": 64.0}, "stem_width must be int, got 64.0"),
        ({"gn_groups": 0}, "gn_groups must be >= 1, got 0"),
        ({"gn_groups": 7}, "gn_groups=7 does not divide stem_width x width_factor = 64"),
        ({"stem_width": 48, "width_factor": 1}, "gn_groups=32 does not divide"),
        ({"std_conv_eps": 0.0}, "std_conv_eps must be > 0, got 0.0"),
        ({"std_conv_eps": "1e-x"}, "std_conv_eps must be float, got '1e-x'"),
        ({"gn_eps": -1e-5}, "gn_eps must be > 0"),
        ({"drop_rate": 1.0}, "drop_rate must be in [0, 1), got 1.0"),
        ({"layers": [3, "4"]}, "layers must be int, got '4'"),
        ({"layers": [3, 4.0]}, "layers must be int, got 4.0"),
        ({"layers": 3}, "layers must be a list of whole numbers, got 3"),
        ({"preact": 1}, "preact must be bool, got 1"),
        ({"stem_type": "big"}, "stem_type='big' is not one of 'fixed', 'same', 'small'"),
        ({"crop_pct": 0.0}, "crop_pct must be in (0, 1]"),
        ({"img_size": -3}, "img_size must be >= 1"),
    ],
)
def test_bad_resnet_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        ResNetConfig(**overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_values_in_other_notations_are_coerced():
    """YAML 1.1 reads 1e-6 as a string and JSON has no tuples: both arrive as the field's type."""
    cfg = ViTConfig(
        layer_norm_eps="1e-6",
        drop_path_rate="1.0e-1",
        crop_pct=1,
        mean=[0.5],
        std=[0.5, 0.5, 0.5],
        num_classes=2,
        class_names=["cat", "dog"],
    )
    assert cfg.layer_norm_eps == 1e-6 and type(cfg.layer_norm_eps) is float
    assert cfg.drop_path_rate == 0.1 and type(cfg.crop_pct) is float
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5)
    assert cfg.class_names == ("cat", "dog")
    bb = ResNetConfig(layers=[1, 2], gn_eps="1e-6", std_conv_eps=1, mean=[0.5] * 3)
    assert bb.layers == (1, 2) and bb.gn_eps == 1e-6 and type(bb.std_conv_eps) is float
    assert bb.mean == (0.5, 0.5, 0.5)


def test_a_backbone_from_json_is_a_checked_resnet_config():
    cfg = ViTConfig(patch_size=1, backbone={"layers": [1], "stem_width": 16, "gn_groups": 8})
    assert isinstance(cfg.backbone, ResNetConfig) and cfg.backbone.layers == (1,)


@pytest.mark.parametrize(
    ("kw", "stem"), [({"stem_width": 8, "gn_groups": 4}, 8), ({"width_factor": 3}, 192)]
)
def test_gn_groups_dividing_the_stem_divides_every_stage(kw, stem):
    """Each stage's widths are multiples of the stem's, so dividing the stem is enough."""
    cfg = ResNetConfig(layers=(1, 1, 1), **kw)
    m = vitlab.create_model(cfg, device="meta")
    widths = {n.num_channels for n in m.modules() if hasattr(n, "num_groups")}
    assert min(widths) == stem and all(w % cfg.gn_groups == 0 for w in widths)


@pytest.mark.parametrize("name", vitlab.list_models())
def test_every_variant_round_trips_through_dict_and_json(name):
    cfg = vitlab.get_config(name)
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(json.loads(config_to_json(cfg))) == cfg  # a checkpoint's metadata
