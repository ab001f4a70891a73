"""The command line (``python -m nnxopt demo --quick``) and the examples run."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _run(args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_demo_quick_prints_table_and_writes_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo.png"
    proc = _run(
        ["-m", "nnxopt", "demo", "--quick", "--no-progress", "--out", str(out)],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("phase") and "rel L2" in line for line in lines)
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line[:5] in ("adam(", "L-BFG")
    }
    assert set(rows) == {"adam(1e-2)", "L-BFGS"}
    # L-BFGS improves on the Adam warm-up (loss column).
    assert float(rows["L-BFGS"][3]) < float(rows["adam(1e-2)"][3])
    assert out.stat().st_size > 1000


def test_cli_help_and_unknown_command(tmp_path):
    assert "demo" in _run(["-m", "nnxopt", "--help"], tmp_path).stdout
    assert _run(["-m", "nnxopt", "nope"], tmp_path).returncode == 2


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    proc = _run([str(path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
