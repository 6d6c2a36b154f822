"""Imports of packages that only an extra installs, with an error that names the extra."""

from __future__ import annotations

import importlib
from typing import Any

from statekit.errors import MissingExtra

__all__ = ["require"]


def require(module: str, extra: str = "workbook", what: str = "this") -> Any:
    """Import `module`, or raise `MissingExtra` saying which extra of statekit installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{what} needs {module.split('.')[0]}, which the runtime install leaves out: "
            f"pip install 'statekit[{extra}]'"
        ) from exc
