"""The command line (``python -m nnxopt demo --quick``) and the examples run."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# checkpoint_resume.py has its own test (tests/test_checkpoint.py).
EXAMPLES = sorted(
    p for p in (ROOT / "examples").glob("*.py") if p.name != "checkpoint_resume.py"
)
# Gallery examples costing 10-20 s of CPU each even with --quick (compilation):
# run with -m slow, and by `python3 run.py docs`. Their cheap defaults: the
# demo test below (the same Adam-then-L-BFGS PINN), and test_optimizer.py's
# tests of `wrt=nnx.LoRAParam` and of the state policy (BatchNorm statistics
# of one forward pass per iteration); the GP fit against scikit-learn has none
# (logistic_regression_sklearn.py is the default check against scikit-learn).
SLOW_EXAMPLES = {
    "pinn_adam_lbfgs.py",
    "lora_finetune.py",
    "batchnorm_dropout.py",
    "gaussian_process_sklearn.py",
}
# Examples that compare with scikit-learn: run again under the SSE4.2 guard.
REFERENCE_EXAMPLES = {"logistic_regression_sklearn.py", "gaussian_process_sklearn.py"}


def _example_param(path):
    marks = [pytest.mark.slow] if path.name in SLOW_EXAMPLES else []
    if path.name in REFERENCE_EXAMPLES:
        marks.append(pytest.mark.reference)
    return pytest.param(path, marks=marks)


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
    # Against the exact solution u = sin(pi x): after 50 L-BFGS iterations the
    # relative L2 error is about 1e-2 (measured 1.0e-2), from 1.7 after Adam.
    rel_l2 = {phase: float(row[4]) for phase, row in rows.items()}
    assert rel_l2["L-BFGS"] < 5e-2 < rel_l2["adam(1e-2)"]
    iters, evals = int(rows["L-BFGS"][1]), int(rows["L-BFGS"][2])
    assert iters <= evals <= 3 * iters  # evaluations are counted, and reused
    assert out.stat().st_size > 1000


def test_demo_solver_option_runs_the_self_scaled_bfgs(tmp_path):
    proc = _run(
        ["-m", "nnxopt", "demo", "--quick", "--no-progress", "--no-plot",
         "--solver", "ssbfgs"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {
        line.split()[0]: line.split()
        for line in proc.stdout.splitlines()
        if line.startswith(("adam(", "SSBFGS"))
    }
    assert set(rows) == {"adam(1e-2)", "SSBFGS"}
    # The same bar as L-BFGS above against u = sin(pi x) (measured: 9e-5).
    assert float(rows["SSBFGS"][4]) < 5e-2 < float(rows["adam(1e-2)"][4])


def test_cli_help_and_unknown_command(tmp_path):
    assert "demo" in _run(["-m", "nnxopt", "--help"], tmp_path).stdout
    assert _run(["-m", "nnxopt", "nope"], tmp_path).returncode == 2


@pytest.mark.parametrize(
    "path", [_example_param(p) for p in EXAMPLES], ids=[p.name for p in EXAMPLES]
)
def test_example_runs(path, tmp_path):
    proc = _run([str(path), "--quick"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
