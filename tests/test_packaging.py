"""vitlab as users install it: a wheel built from this tree carries the presets, and a
non-editable install of it runs a preset and a study from another folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"fashion_mnist_vit", "fashion_mnist_bit", "finetune_paper"}
STUDY_PRESETS = {"data-scaling-quick", "transfer-quick", "model-scaling-quick"}


def _build_wheel(tmp: Path) -> Path:
    """A wheel built from a copy of the tree (so no build/ folder is left in the checkout)."""
    tree = tmp / "tree"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", tree / "src", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = tmp / "wheels"
    subprocess.run([*pip, "wheel", str(tree), "--no-deps", "--no-build-isolation", "-w",
                    str(wheels)], check=True, capture_output=True, text=True)  # fmt: skip
    (wheel,) = wheels.glob("vitlab-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_contains_the_presets(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"vitlab/configs/{p}.yaml" for p in PRESETS} <= names
    assert {f"vitlab/configs/studies/{p}.yaml" for p in STUDY_PRESETS} <= names


@pytest.mark.slow
def test_wheel_install_runs_a_preset_and_a_study_from_another_folder(
    wheel: Path, tmp_path: Path
) -> None:
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install",
                    "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "VITLAB_CONFIGS"}
    env["PYTHONPATH"] = str(site)  # the wheel's copy, not this checkout's (nor the editable one)

    def vitlab(*args: str) -> str:
        run = subprocess.run([sys.executable, "-m", "vitlab", *args], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout

    probe = [sys.executable, "-c", "import vitlab; print(vitlab.__file__)"]
    where = subprocess.run(probe, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stderr

    out = tmp_path / "run"
    vitlab("train", "--config", "fashion_mnist_vit", "--data", "digits", "--steps", "5",
           "--out", str(out))  # fmt: skip
    assert (out / "last.safetensors").is_file()
    # the packaged quick preset, on digits (Fashion-MNIST may not be on this machine)
    study = ("study", "data-scaling", "--print-commands", "--set", "data=digits",
             "--set", "sizes=[100,400]", "--set", "families.vit.lr_grid=null",
             "--out", str(tmp_path / "study"))  # fmt: skip
    assert "vitlab train --config" in vitlab(*study)
