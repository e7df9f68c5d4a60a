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


def _no_timing(device, dtype, **kw):
    raise AssertionError("a resumed run must not measure again")


@pytest.mark.parametrize(
    ("bf16_gflops", "expected"), [(400.0, "bf16"), (220.0, "fp32"), (170.0, "fp32")]
)
def test_precision_auto_takes_bf16_only_where_it_is_faster(monkeypatch, bf16_gflops, expected):
    """`precision: auto` times a bf16 and an fp32 matmul on the CPU and takes bf16 only when it
    is clearly faster (here fp32 runs at 200 GFLOP/s); explicit precisions pass through."""
    import torch

    from vitlab.train import run
    from vitlab.train.distributed import DistInfo

    speeds = {torch.float32: 200.0, torch.bfloat16: bf16_gflops}
    monkeypatch.setattr(run, "matmul_peak_gflops", lambda device, dtype, **kw: speeds[dtype])
    monkeypatch.setattr(run, "onednn_linear", lambda dtype: object())
    cpu = DistInfo(device=torch.device("cpu"))
    assert run.resolve_precision("auto", cpu) == expected
    assert run.resolve_precision("fp32", cpu) == "fp32"
    assert run.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(run, "onednn_linear", lambda dtype: None)  # no native bf16 on this CPU
    assert run.resolve_precision("auto", cpu) == "fp32"

    monkeypatch.setattr(run, "matmul_peak_gflops", _no_timing)
    assert run.resolve_precision("auto", cpu, resumed="bf16") == "bf16"
    assert run.resolve_precision("fp32", cpu, resumed="bf16") == "fp32"  # given outright


def test_precision_auto_is_resolved_before_the_run_starts(tmp_path, monkeypatch):
    """The run's saved config records the precision it actually trained in, and a resume
    keeps it without measuring again."""
    from vitlab.train import fit, run

    cfg = build_config(
        None,
        {
            "model": "vit_test",
            "data": "synthetic",
            "steps": 1,
            "batch_size": 4,
            "img_size": 32,
            "precision": "auto",
            "out": str(tmp_path / "run"),
        },
    )
    fit(cfg)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "precision: auto" not in saved
    assert "precision: fp32" in saved or "precision: bf16" in saved

    monkeypatch.setattr(run, "matmul_peak_gflops", _no_timing)
    fit(cfg, resume="auto")
    assert (tmp_path / "run" / "config.yaml").read_text() == saved
