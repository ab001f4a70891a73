"""examples/multiprocess.py: two processes joined by ``jax.distributed`` (2 CPU
devices each) solve one data-parallel problem: identical results in both
processes, agreeing with the single-process solve and the closed form."""

from __future__ import annotations

import pathlib
import runpy
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "multiprocess.py"


def _example():
    return SimpleNamespace(**runpy.run_path(str(EXAMPLE)))


def _closed_form(ex):
    X, y = ex.problem()
    n = X.shape[0]
    return np.linalg.solve(X.T @ X / n + ex.RIDGE * np.eye(X.shape[1]), X.T @ y / n)


# The solves stop on gtol=1e-5 (the float64 default); the Hessian X^T X / N +
# RIDGE has eigenvalues of order 1 (16 standard normal features): the distance
# to the minimizer is below about 1e-5.
EXACT = 1e-5


def test_single_process_solve_of_the_example():
    ex = _example()
    r = ex.solve_here(*ex.problem())
    assert r["status"] == "CONVERGED_GTOL"
    assert np.max(np.abs(np.array(r["w"]) - _closed_form(ex))) <= EXACT


@pytest.mark.slow
def test_two_processes_agree():
    ex = _example()
    results = ex.launch()
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["devices"] == 4 for r in results)
    # one SPMD program, globally reduced values: bit-identical in both processes
    assert results[0] == {**results[1], "process": 0}
    single = ex.solve_here(*ex.problem())
    assert results[0]["status"] == single["status"] == "CONVERGED_GTOL"
    assert results[0]["nit"] == single["nit"]
    # 4 devices sum the batch in another order than 1: round-off only
    assert np.max(np.abs(np.array(results[0]["w"]) - single["w"])) <= 1e-12
    assert np.max(np.abs(np.array(results[0]["w"]) - _closed_form(ex))) <= EXACT
