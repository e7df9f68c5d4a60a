import pytest

from vitlab.cli.main import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "models" in out and "vitlab COMMAND --help" in out


def test_unknown_command_is_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'frobnicate'" in err[0]


def _help_texts():
    from vitlab.cli.main import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return [parser.format_help()] + [sub.choices[name].format_help() for name in COMMANDS]


def test_examples_only_name_checkpoints_a_run_writes():
    """`predict --help` and the inspect docstring used `runs/demo/model.safetensors`, a file no
    run writes (runs write last/best.safetensors)."""
    import re
    from pathlib import Path

    import vitlab.inspect
    from vitlab.soup import SOUP_FILES
    from vitlab.train.state import RUN_FILES

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    texts = [*_help_texts(), readme, vitlab.inspect.__doc__]
    named = {m for t in texts for m in re.findall(r"runs/[\w.-]+/(\w+\.safetensors)", t)}
    assert named and named <= set(RUN_FILES.values()) | set(SOUP_FILES.values())


def test_every_device_flag_defaults_to_auto():
    from vitlab.cli.main import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    defaults = {
        name: a.default
        for name in COMMANDS
        for a in sub.choices[name]._actions
        if "--device" in a.option_strings
    }
    assert set(defaults) == {"predict", "inspect", "eval", "bench", "serve", "soup"}
    assert set(defaults.values()) == {"auto"}  # as TrainConfig's device: the GPU when present


def test_train_help_lists_every_config_key():
    """The unknown-key error points to `vitlab train --help`, which used to list no keys."""
    import dataclasses

    from vitlab.train.config import TrainConfig

    text = " ".join(_help_texts())
    assert all(f.name in text for f in dataclasses.fields(TrainConfig))


def test_quiet_works_after_the_command_too(capsys):
    assert main(["models", "vit_test", "-q"]) == 0
    assert "vit_test" in capsys.readouterr().out


def test_a_load_says_what_it_read_in_one_line(tmp_path, caplog):
    import vitlab

    path = vitlab.save_checkpoint(vitlab.create_model("vit_test"), tmp_path / "m.safetensors")
    with caplog.at_level("INFO", logger="vitlab"):
        vitlab.load_checkpoint(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"loaded {path}: vitlab .safetensors (detected)"
    ]


def test_errors_of_commands_without_presets_do_not_point_to_one(tmp_path, capsys):
    assert main(["predict", "--checkpoint", "x", "a.png", "--batch-size", "0"]) == 2
    assert "preset" not in capsys.readouterr().err
