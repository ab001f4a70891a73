"""Smoke test of the benchmark runner: it completes and its outputs are well formed.

Nothing is timed here; nnxopt's evaluation counts are checked against scipy's
in the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ["scipy", "optax-wl", "nnxopt", "nnxopt-step"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--out",
        str(out),
        "--repeats",
        "1",
        "--no-plot",
        "--solvers",
        *SOLVERS,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _tables(markdown: str) -> list[list[str]]:
    tables, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_quick_benchmark_writes_well_formed_tables(quick_run):
    out, _ = quick_run
    markdown = (out / "results.md").read_text()
    tables = _tables(markdown)
    assert len(tables) >= 3
    for table in tables:
        header, rule, *rows = table
        width = header.count("|")
        assert set(rule.replace("|", "").replace(":", "").strip()) <= {"-", " "}
        assert rows, header
        assert all(row.count("|") == width for row in rows), table
    assert "nnxopt" in markdown and "scipy" in markdown


def test_quick_benchmark_json_has_every_solver_on_every_problem(quick_run):
    out, _ = quick_run
    data = json.loads((out / "results.json").read_text())
    problems = {p["name"] for p in data["problems"]}
    rows = data["rows"]
    assert not [r for r in rows if "error" in r]
    seen = {(r["problem"], r["short"]) for r in rows}
    assert seen == {(p, s) for p in problems for s in SOLVERS}
    for row in rows:
        assert row["reached"], row
        assert row["nfev"] >= row["evals_to_target"] >= 1


def test_nnxopt_needs_no_more_evaluations_than_scipy_on_the_quick_set(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "results.json").read_text())["rows"]
    by = {(r["problem"], r["short"]): r for r in rows}
    for problem in {r["problem"] for r in rows}:
        ours = by[(problem, "nnxopt")]["evals_to_target"]
        scipy = by[(problem, "scipy")]["evals_to_target"]
        assert ours <= 1.15 * scipy, (problem, ours, scipy)


@pytest.mark.slow  # suite time: 15 s
def test_suites_cover_nnx_workloads_and_sizes_up_to_1e5():
    import jax.numpy as jnp

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks._tasks import NNX, build_tasks

    sizes = build_tasks(suite="sizes", dtype=jnp.float32)
    counts = [t.n for t in sizes]
    assert counts == sorted(counts) and counts[0] >= 900 and 0.9e5 <= counts[-1] <= 2e5
    assert all(t.dtype == jnp.float32 and t.f_ref is None for t in sizes)
    nnx = build_tasks(suite="nnx", dtype=jnp.float32)
    assert [t.name for t in nnx] == list(NNX)
    assert all(t.dtype == jnp.float32 and t.f_ref is not None for t in nnx)
    with pytest.raises(ValueError, match="unknown suite"):
        build_tasks(suite="huge")
