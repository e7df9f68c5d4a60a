"""The registry of studies: one module each, read by the plan, the report and `vitlab study`,
and light enough that `vitlab study --help` lists them without importing torch."""

import subprocess
import sys

import pytest

from vitlab.cli.main import build_parser
from vitlab.study.plan import PRESETS, studies_dir
from vitlab.study.report import COLUMNS
from vitlab.study.studies import COMMON_KEYS, STUDIES, Study


@pytest.mark.parametrize("name", list(STUDIES))
def test_each_study_is_one_module_with_its_presets(name):
    s = STUDIES[name]
    assert isinstance(s, Study) and s.name == name
    module = sys.modules[s.expand.__module__]
    assert module.__name__ == f"vitlab.study.studies.{name.replace('-', '_')}"
    assert {s.check.__module__, s.summary.__module__} == {module.__name__}
    assert s.axis.key in COLUMNS and s.description
    assert not set(s.keys) & set(COMMON_KEYS)
    for preset in PRESETS:
        assert (studies_dir() / f"{name}-{preset}.yaml").is_file()


def test_the_command_line_lists_the_registry_and_its_descriptions():
    parser = build_parser()
    sub = next(a for a in parser._actions if getattr(a, "choices", None) and "study" in a.choices)
    study = sub.choices["study"]
    name = next(a for a in study._actions if a.dest == "name")
    assert list(name.choices) == list(STUDIES)
    text = " ".join(study.format_help().split())
    for s in STUDIES.values():
        assert f"{s.name} {s.description}" in text


def test_study_help_imports_neither_torch_nor_matplotlib():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vitlab", "study", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    modules = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "vitlab.study.studies" in modules
    assert not {m for m in modules if m.split(".")[0] in ("torch", "matplotlib", "numpy")}
