"""Every flag of every subcommand, walked from the argparse definitions (so a flag added later
is covered without editing this file): numbers given 0, -1 and `abc`, paths given a missing
path, a file where a folder goes and a folder where a file goes, and `--set` given values of
the wrong type. No run may print a traceback: each either behaves as the valid value it is, or
exits 2 with one line naming the flag."""

import argparse
import dataclasses
import re
import typing

import pytest

from vitlab.cli.main import COMMANDS, build_parser, main
from vitlab.train.config import TrainConfig

pytestmark = pytest.mark.slow


def _base(cmd, s, out):
    """A valid, cheap command line for `cmd` on the stand-ins."""
    m, photo = str(s / "m.safetensors"), str(s / "photo.png")
    train = ["--data", "synthetic", "--img-size", "16", "--steps", "1", "--batch-size", "8",
             "--out", str(out / "run"), "--overwrite", "--set", "precision=fp32"]  # fmt: skip
    return {
        "train": ["train", "--model", "vit_test", *train, "--set", "model_args.patch_size=4"],
        "finetune": ["finetune", "--from", m, *train],
        "pretrain": ["pretrain", "--model", "vit_test", *train, "--set", "model_args.patch_size=4"],
        "eval": ["eval", "--checkpoint", m, "--data", "synthetic", "--batch-size", "32"],
        "predict": ["predict", "--checkpoint", m, photo],
        "inspect": [
            "inspect",
            "--checkpoint",
            m,
            "--out",
            str(out / "maps"),
            "--images",
            photo,
            "--components",
            "2",
        ],
        "convert": ["convert", m, str(out / "c.safetensors"), "--to", "vitlab"],
        "bench": ["bench", "--model", "vit_test", "--iters", "1", "--warmup", "0"],
        "models": ["models", "vit_test"],
        "study": ["study", "data-scaling", "--preset", _tiny_study(out), "--out", str(out / "st")],
        "soup": [
            "soup",
            m,
            m,
            "--greedy",
            "--data",
            "synthetic",
            "--val-split",
            "0.25",
            "--out",
            str(out / "soup"),
            "--allow-different-init",
        ],
        "serve": ["serve", "--checkpoint", m, "--port", "0"],  # uvicorn.run is a no-op here
    }[cmd]


def _tiny_study(out):
    """A data-scaling study of one point of one step on digits."""
    path = out / "tiny-study.yaml"
    path.write_text(
        "study: data-scaling\n"
        "train: {data: digits, img_size: 8, steps: 1, batch_size: 8, precision: fp32}\n"
        "families: {vit: {model: vit_test, model_args: {img_size: 8, patch_size: 4}}}\n"
        "sizes: [20]\n"
    )
    return str(path)


@pytest.fixture(autouse=True)
def _no_server(monkeypatch):
    """`vitlab serve` builds its app and returns instead of serving forever."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)


def _all_actions(cmd):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[cmd]._actions if a.dest not in ("help", "quiet")]


def _actions(cmd):
    return [a for a in _all_actions(cmd) if a.option_strings]


def _numeric(cmd):
    return [(cmd, a.option_strings[-1]) for a in _actions(cmd)
            if getattr(a.type, "numeric", False) or a.type in (int, float)]  # fmt: skip


PATHISH = re.compile(r"PATH|DIR|FILE|CHECKPOINT|YAML|SRC|DST|IMAGE")
# Where each command's positional arguments stand in its base command line.
POSITIONS = {("convert", "src"): 1, ("convert", "dst"): 2, ("predict", "paths"): 3,
             ("models", "pattern"): 1, ("study", "name"): 1,
             ("soup", "checkpoints"): 1}  # fmt: skip


def _paths(cmd):
    """Every argument that names a file or folder: (cmd, flag or dest, kind or None)."""
    out = []
    for a in _all_actions(cmd):
        kind = getattr(a.type, "path_kind", None)
        if kind or PATHISH.search(a.metavar or ""):
            out.append((cmd, a.option_strings[-1] if a.option_strings else a.dest, kind))
    return out


def _with(argv, flag, value, cmd=None):
    """`argv` with `flag` (or the positional `flag` of `cmd`) set to `value`."""
    if not flag.startswith("-"):
        i = POSITIONS[(cmd, flag)]
        return [*argv[:i], value, *argv[i + 1 :]]
    if flag in argv:
        i = argv.index(flag)
        return [*argv[: i + 1], value, *argv[i + 2 :]]
    return [*argv, flag, value]


def _check(argv, names, capsys):
    """Run `argv`: no traceback, and exit 0/1, or 2 with one error line naming the flag or the
    value given (`names`)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if code == 2:
        lines = [line for line in err.strip().splitlines() if "error:" in line]
        names = [names] if isinstance(names, str) else names
        assert len(lines) == 1 and any(n in lines[0] for n in names), (argv, err)
    else:
        assert code in (0, 1), (argv, code, err)  # 1: predict/inspect skipped a bad image
    return code


NUMERIC = [p for cmd in COMMANDS for p in _numeric(cmd)]
PATHS = [p for cmd in COMMANDS for p in _paths(cmd)]


def test_the_walk_finds_the_flags():
    assert ("inspect", "--components") in NUMERIC and ("bench", "--iters") in NUMERIC
    assert ("train", "--out", "dir") in PATHS and ("predict", "--out", "file") in PATHS
    assert ("eval", "--checkpoint", None) in PATHS and ("convert", "dst", None) in PATHS
    assert len(NUMERIC) >= 25


def test_every_positional_argument_has_a_place_in_the_base_command():
    """A new positional argument needs its place in POSITIONS, or the walk cannot vary it."""
    for cmd in COMMANDS:
        for a in _all_actions(cmd):
            if not a.option_strings:
                assert (cmd, a.dest) in POSITIONS, (cmd, a.dest)


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
@pytest.mark.parametrize(("cmd", "flag"), NUMERIC)
def test_numbers(cmd, flag, value, standins, tmp_path, capsys):
    code = _check(_with(_base(cmd, standins, tmp_path), flag, value), flag, capsys)
    if value == "abc":
        assert code == 2


@pytest.mark.parametrize("case", ["missing", "file", "folder"])
@pytest.mark.parametrize(("cmd", "flag", "kind"), PATHS, ids=str)
def test_output_and_data_paths(cmd, flag, kind, case, standins, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.json").write_text("{}")
    path = {"missing": tmp_path / "new" / "x.json", "file": tmp_path / "file.json",
            "folder": tmp_path / "folder"}[case]  # fmt: skip
    argv = _with(_base(cmd, standins, tmp_path), flag, str(path), cmd)
    code = _check(argv, [flag, path.name], capsys)
    wrong = (kind == "dir" and case == "file") or (kind == "file" and case == "folder")
    assert (code == 2) if wrong else True


def _typed_fields(cls, kinds=(int, float)):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if hints[f.name] in kinds or any(a in kinds for a in typing.get_args(hints[f.name])):
            yield f.name


@pytest.mark.parametrize("key", list(_typed_fields(TrainConfig)))
def test_train_set_of_the_wrong_type(key, standins, tmp_path, capsys):
    argv = [*_base("train", standins, tmp_path), "--set", f"{key}=abc"]
    assert _check(argv, key, capsys) == 2


@pytest.mark.parametrize("cmd", ["eval", "predict", "inspect", "convert", "train"])
@pytest.mark.parametrize("key", ["depth", "layer_norm_eps", "num_heads"])
def test_model_set_of_the_wrong_type(cmd, key, standins, tmp_path, capsys):
    prefix = "model_args." if cmd == "train" else ""
    argv = [*_base(cmd, standins, tmp_path), "--set", f"{prefix}{key}=abc"]
    assert _check(argv, key, capsys) == 2
