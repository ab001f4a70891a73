"""The doctests of the documentation pages run with the test suite's set-up.

``pytest`` collects the ``>>>`` examples of ``docs/*.md`` and ``docs/api/*.md``
(``testpaths`` and ``--doctest-glob`` in ``pyproject.toml``; the examples of one
page share one namespace, top to bottom). They get what ``tests/conftest.py``
gives the tests: float64, the CPU, the cheap compile flags (set before JAX
creates its CPU client) and the persistent compilation cache. That file is
executed here rather than copied; running it twice in one session (``pytest``
loads it for ``tests/`` too) changes nothing, since every setting it makes is
idempotent.

The pages whose examples take several seconds (their compilations) are marked
``slow`` in ``PAGE_MARKS`` and run with ``pytest -m slow docs``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_SETUP = _HERE.parent / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_nnxopt_test_setup", _SETUP)
assert _spec is not None and _spec.loader is not None, _SETUP
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))

#: Markers of the pages (paths relative to ``docs/``), from
#: ``pytest -n0 --durations=0 docs`` on 2 busy cores (load 2.5, cold cache):
#: solve.md 13 s, lbfgs_nnx.md 10 s, state_policy.md and from_optax.md 6 s,
#: from_pytorch.md 4 s run with ``-m slow``; from_scipy.md (3 s, it compares
#: with scipy), choosing_a_solver.md (3-4 s) and api/results.md (one solve,
#: 3-4 s: the only run example of several types) run by default.
PAGE_MARKS: dict[str, str] = {
    "solve.md": "slow",
    "lbfgs_nnx.md": "slow",
    "state_policy.md": "slow",
    "from_optax.md": "slow",
    "from_pytorch.md": "slow",
    "from_scipy.md": "reference",
}


#: Not doctest modules: the site's build hooks (importing them needs mkdocs)
#: and this file (its module name, conftest, is the one of tests/conftest.py).
collect_ignore = ["_hooks.py", "_griffe_rst.py", "conftest.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.is_relative_to(_HERE):
            mark = PAGE_MARKS.get(path.relative_to(_HERE).as_posix())
            if mark is not None:
                item.add_marker(getattr(pytest.mark, mark))
