"""The documentation site: every public name has an API reference entry and a
``>>>`` example that the default suite runs, and the strict build passes (no
broken link, no unresolved reference). The pages' own examples are collected
by pytest itself (``docs`` in ``testpaths``; ``docs/conftest.py``)."""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
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


def _page_marks() -> dict[str, str]:
    """``PAGE_MARKS`` of ``docs/conftest.py`` (read, not run: running it would
    set the suite up a second time)."""
    tree = ast.parse((DOCS / "conftest.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "PAGE_MARKS" for t in targets):
                assert node.value is not None
                return ast.literal_eval(node.value)
    raise AssertionError("docs/conftest.py defines no PAGE_MARKS")


def _default_page_examples() -> str:
    """The code and expected output of every ``>>>`` example of the pages that
    the default suite runs (``docs/**/*.md`` not marked ``slow``)."""
    marks = _page_marks()
    parser = doctest.DocTestParser()
    texts = []
    for page in sorted(DOCS.rglob("*.md")):
        if marks.get(page.relative_to(DOCS).as_posix()) == "slow":
            continue
        for example in parser.get_examples(page.read_text()):
            texts += [example.source, example.want]
    return "\n".join(texts)


def _has_own_example(obj: object, name: str) -> bool:
    """Whether the docstring of ``obj`` (which ``--doctest-modules`` runs from
    ``src/``) has a ``>>>`` example; a module counts its own and that of its
    same-named member (``nnxopt.linesearch.zoom``: the function ``zoom``)."""
    docs = []
    if inspect.ismodule(obj):
        docs += [obj.__doc__, getattr(getattr(obj, name, None), "__doc__", None)]
    elif inspect.isclass(obj) or inspect.isroutine(obj):
        docs.append(obj.__doc__)  # constants' __doc__ is their type's: not theirs
    return any(">>>" in (doc or "") for doc in docs)


def test_every_public_name_has_an_example_the_default_suite_runs():
    """Its own docstring's, or one on a page pytest runs by default that names
    it (``docs/api/results.md`` shows the state and result types)."""
    public = _public(nnxopt) | _public(linesearch) | _public(problems)
    pages = _default_page_examples()
    missing = sorted(
        name
        for name in public
        if not _has_own_example(_exported(name), short := name.rsplit(".", 1)[-1])
        and not re.search(rf"\b{short}\b", pages)
    )
    assert not missing, (
        f"public names without a >>> example that the default suite runs: "
        f"{missing}; add one to the docstring, or use the name on a docs page "
        "not marked slow in docs/conftest.py"
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
