import json

import pytest

from vitlab.cli.main import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "models" in out and "vitlab COMMAND --help" in out


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vit_b16" in out and "ViT-H/14" in out and "GFLOPs" in out


def test_models_paper_json(capsys):
    assert main(["models", "--paper", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["layers"] for r in rows] == [12, 24, 32]
    assert [r["heads"] for r in rows] == [12, 16, 16]


def test_models_no_match(capsys):
    assert main(["models", "zzz"]) == 1
    assert "no variant matches" in capsys.readouterr().out


def test_unknown_command_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
