"""The checkpoint guide's example: save ``result.state`` with orbax, resume in a
new process, and match one uninterrupted solve (computed here)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "checkpoint_resume.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("checkpoint_resume", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_in_a_new_process_matches_one_call(tmp_path, capsys):
    pytest.importorskip("orbax.checkpoint")
    ex = _load_example()
    # The example's two halves: save here (this process has JAX warm), resume
    # in a new process running the example script, as a user would.
    ex.save(tmp_path)
    saved = capsys.readouterr().out
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "resume", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = dict(
        (m[0], (int(m[1]), int(m[2]), float(m[3])))
        for m in re.findall(
            r"(\w+) nit=(\d+) nfev=(\d+) fun=(\S+)", saved + proc.stdout
        )
    )
    assert found["saved"][0] == 20
    model = ex.MLP(ex.nnx.Rngs(0))
    whole = ex.nnxopt.minimize(ex.loss_fn, model, *ex.data(), maxiter=40)
    assert whole.nit == 40  # still descending: the resume did real work
    nit, nfev, fun = found["resumed"]
    assert (nit, nfev) == (whole.nit, whole.nfev)
    # Two processes on one machine run the same compiled code; allow only the
    # round-off of a different compilation.
    assert fun == pytest.approx(float(whole.fun), rel=1e-10)
