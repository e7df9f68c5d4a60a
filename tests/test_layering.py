"""The import costs the layering promises, checked in fresh interpreters: the command line's
parser is built without torch (so `vitlab --help` is instant), and the model package imports
neither torchvision nor huggingface_hub. (The layer contracts themselves run in `make lint`.)"""

import subprocess
import sys

import pytest


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_parser_is_built_without_torch():
    code = "from vitlab.cli.main import build_parser\nbuild_parser().format_help()"
    heavy = ("torch", "numpy", "yaml", "huggingface_hub", "torchvision", "vitlab.models")
    assert _loaded_after(code, heavy) == []


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("import vitlab.models", ("torchvision", "huggingface_hub", "vitlab.weights")),
        ("import vitlab", ("torch",)),
        ("import vitlab.train.config", ("torch",)),
        ("import vitlab.data.datasets", ("vitlab.models", "vitlab.weights", "vitlab.runtime")),
    ],
)
def test_importing_a_package_does_not_load_what_it_does_not_need(code, absent):
    assert _loaded_after(code, absent) == []


def test_the_public_api_resolves_lazily():
    import vitlab

    assert set(vitlab.__all__) <= set(dir(vitlab))
    for name in vitlab.__all__:
        assert getattr(vitlab, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vitlab.nope  # noqa: B018
