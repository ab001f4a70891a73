"""The command line (``python -m nnxopt demo --quick``) and the examples run."""

from __future__ import annotations

import os
import pathlib
import runpy
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# checkpoint_resume.py and multiprocess.py start processes of their own: they
# have their own tests (tests/test_checkpoint.py, tests/test_multiprocess.py).
OWN_TESTS = {"checkpoint_resume.py", "multiprocess.py"}
EXAMPLES = sorted(
    p for p in (ROOT / "examples").glob("*.py") if p.name not in OWN_TESTS
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
    # One process for two second phases (the default L-BFGS and --solver's
    # self-scaled BFGS, both from the point Adam reached): the demo's import
    # and Adam phase are paid once.
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo.png"
    proc = _run(
        ["-m", "nnxopt", "demo", "--quick", "--no-progress", "--out", str(out),
         "--solver", "lbfgs,ssbfgs"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("phase") and "rel L2" in line for line in lines)
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.startswith(("adam(", "L-BFGS", "SSBFGS"))
    }
    assert set(rows) == {"adam(1e-2)", "L-BFGS", "SSBFGS"}
    # Against the exact solution u = sin(pi x): after 50 L-BFGS iterations the
    # relative L2 error is about 1e-2 (measured 1.0e-2; self-scaled BFGS 9e-5),
    # from 1.7 after Adam.
    rel_l2 = {phase: float(row[4]) for phase, row in rows.items()}
    assert max(rel_l2["L-BFGS"], rel_l2["SSBFGS"]) < 5e-2 < rel_l2["adam(1e-2)"]
    for phase in ("L-BFGS", "SSBFGS"):
        iters, evals = int(rows[phase][1]), int(rows[phase][2])
        assert iters <= evals <= 3 * iters  # evaluations are counted, and reused
    assert out.stat().st_size > 1000


def test_cli_help_unknown_command_and_unknown_solver(capsys):
    # In this process (the command line's own process start is covered by the
    # demo test above): each subprocess would pay JAX's import again.
    from nnxopt.__main__ import main

    assert main(["--help"]) == 0 and "demo" in capsys.readouterr().out
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--solver", "lbfgs,newton"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown solver newton" in err and "ssbroyden" in err


@pytest.mark.parametrize(
    "path", [_example_param(p) for p in EXAMPLES], ids=[p.name for p in EXAMPLES]
)
def test_example_runs(path, tmp_path, monkeypatch):
    # As ``python examples/NAME.py --quick`` would, but in this process: a new
    # process per example would pay JAX's import and start-up again (~5 s).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(path), "--quick"])
    runpy.run_path(str(path), run_name="__main__")
