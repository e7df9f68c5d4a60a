"""User-facing errors: each message says what was wrong and what to do about it.

The command line prints these as one line (no traceback) and exits with status 2.
"""

from __future__ import annotations

from types import ModuleType


class VitlabError(Exception):
    """Base class for mistakes a user can fix (bad input, bad config, wrong file)."""


class ConfigError(VitlabError, ValueError):
    """A configuration value or override that does not make sense."""


class CheckpointError(VitlabError):
    """A file that is not a checkpoint, or whose weights do not fit the model."""


class UnknownModelError(VitlabError, KeyError):
    """A model name the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(VitlabError):
    """An optional package the requested feature needs is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """`import module`, or a MissingDependencyError naming the extra that installs it, one
    line for every optional package: "ONNX Runtime inference needs onnxruntime, which is not
    installed: pip install 'vitlab[onnx]'"."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise MissingDependencyError(
            f"{purpose} needs {package}, which is not installed: pip install 'vitlab[{extra}]'"
        ) from None
