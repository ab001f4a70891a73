"""Load the shared problem library ``tests/problems.py`` (``tests`` is no package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PROBLEMS_PATH = Path(__file__).resolve().parent.parent / "tests" / "problems.py"


def load() -> ModuleType:
    """Return the ``problems`` module, importing it from ``tests/`` once."""
    if "problems" in sys.modules and getattr(
        sys.modules["problems"], "__file__", None
    ) == str(PROBLEMS_PATH):
        return sys.modules["problems"]
    spec = importlib.util.spec_from_file_location("problems", PROBLEMS_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the problem library from {PROBLEMS_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["problems"] = module
    spec.loader.exec_module(module)
    return module
