"""`vitlab models`: the registry as a table, the paper's Table 1, JSON rows."""

import json

from vitlab.cli.main import main


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
