"""The documentation site: every public name has an API reference entry, the
strict build passes (no broken link, no unresolved reference) and the guides'
code runs."""

from __future__ import annotations

import ast
import doctest
import importlib
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

import nnxopt
from nnxopt import linesearch, problems

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The guides whose ``>>>`` blocks this file runs (tiny problems each).
GUIDES = ("from_scipy.md", "from_pytorch.md", "from_optax.md")


def _public(module: types.ModuleType) -> set[str]:
    """The public names of a module: its ``__all__``, else what its source
    exports by the package's convention: ``import x as x`` re-exports and
    top-level definitions and assignments whose name has no underscore."""
    names = getattr(module, "__all__", None)
    if names is None:
        tree = ast.parse(pathlib.Path(module.__file__).read_text())
        names = []
        for node in tree.body:
            if isinstance(node, ast.ImportFrom | ast.Import):
                names += [a.asname for a in node.names if a.asname == a.name]
            elif isinstance(node, ast.FunctionDef | ast.ClassDef):
                names.append(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = (
                    node.targets if isinstance(node, ast.Assign) else [node.target]
                )
                names += [t.id for t in targets if isinstance(t, ast.Name)]
    return {f"{module.__name__}.{n}" for n in names if not n.startswith("_")}


def _reference_entries() -> set[str]:
    entries = set()
    for page in (DOCS / "api").glob("*.md"):
        entries |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.MULTILINE))
    return entries


def _resolve(dotted: str) -> object:
    """The object a dotted name means: the longest importable module, then
    attributes (``nnxopt.linesearch.zoom.zoom`` is the function)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _exported(dotted: str) -> object:
    """What ``from <module> import <name>`` gives (a re-export, not a submodule
    of the same name)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_public_name_has_an_api_reference_entry():
    public = _public(nnxopt) | _public(linesearch) | _public(problems)
    assert len(public) > 80, sorted(public)  # the rule above finds the names
    # An entry documents a name where it is defined or where it is exported:
    # ``::: nnxopt.linesearch.zoom.zoom`` covers ``nnxopt.linesearch.zoom``.
    entries = {}
    for entry in _reference_entries():
        entries[entry] = _resolve(entry)  # every entry names something real
    missing = sorted(
        name
        for name in public
        if name not in entries
        and not any(
            e.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1] and obj is _exported(name)
            for e, obj in entries.items()
        )
    )
    assert not missing, (
        f"public names without an entry in docs/api/*.md: {missing}; add a "
        "'::: <name>' line to the page of their area"
    )


def test_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: a warning (a broken link or anchor, a page
    missing from the nav, a docstring mkdocstrings cannot resolve) fails it."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    status_page = (tmp_path / "api" / "status" / "index.html").read_text()
    # The message tables are rendered from the enums, one row per member.
    for member in [*nnxopt.Status, *linesearch.SearchStatus]:
        assert f"<code>{member.name}</code>" in status_page, member
    assert (tmp_path / "gallery" / "index.html").exists()


@pytest.mark.parametrize(
    "guide",
    # from_scipy.md compares with scipy (marked reference); the others'
    # compilations (13-16 s each) run with -m slow.
    [
        pytest.param(
            g, marks=pytest.mark.reference if "scipy" in g else pytest.mark.slow
        )
        for g in GUIDES
    ],
)
def test_guide_code_runs(guide):
    result = doctest.testfile(
        str(DOCS / guide),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted > 0, f"{guide} has no >>> example"
    assert result.failed == 0, f"{guide}: {result.failed} examples failed"
