"""Every line search, through ``nnxopt.minimize``, on the known-minimum library.

References: the published minima of Moré, Garbow and Hillstrom (1981) and the
scipy L-BFGS-B float64 runs recorded in ``tests/problems.py`` (value reached and
evaluations used, same gtol/ftol/memory).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import problems as P
import pytest
from flax import nnx

import nnxopt

#: every search on these; the default search (more_thuente) on all of them.
PROBLEMS = ("rosenbrock", "beale", "helical_valley", "wood")
MORE = ("freudenstein_roth", "bard", "box_3d", "powell_singular")
SEARCHES = ("more_thuente", "zoom", "hager_zhang", "backtracking")
#: evaluations allowed, as a multiple of scipy's recorded count (measured
#: geometric means: 1.0 for the Wolfe searches, 1.9 for backtracking).
MAX_NFEV_RATIO = {
    "more_thuente": 1.3,
    "zoom": 1.3,
    "hager_zhang": 1.5,
    "backtracking": 2.6,
}
#: how close to scipy's value: f <= f_scipy + F_TOL * max(1, f0).
F_TOL = 1e-10


class Flat(nnx.Module):
    def __init__(self, x):
        self.x = nnx.Param(x)


@functools.cache
def _mgh():
    return {p.name: p for p in P.mgh_problems()}


@functools.cache
def _loss(name):
    fn = _mgh()[name].fn
    return lambda model: fn(model.x[...])


CASES = [(n, s) for n in PROBLEMS for s in SEARCHES] + [
    (n, "more_thuente") for n in MORE
]


@pytest.mark.parametrize(("name", "search"), CASES)
def test_each_search_reaches_scipy_minimum_on_the_library(name, search):
    problem, ref = _mgh()[name], P.SCIPY_REFERENCE[name]
    model = Flat(jnp.asarray(problem.x0, jnp.float64))
    tx = nnxopt.lbfgs(linesearch=getattr(nnxopt.linesearch, search)())
    result = nnxopt.minimize(
        _loss(name), model, tx=tx, gtol=1e-8, ftol=1e-12, maxiter=2000
    )
    f0 = float(problem.fn(jnp.asarray(problem.x0)))
    assert float(result.fun) <= ref.fun + F_TOL * max(1.0, f0), (result, ref)
    if problem.f_star is not None:  # and the published minimum of that basin
        assert abs(float(result.fun) - problem.f_star) <= 1e-5 * max(
            1.0, problem.f_star
        )
    assert result.nfev <= MAX_NFEV_RATIO[search] * ref.nfev, (result.nfev, ref.nfev)
    assert np.all(np.isfinite(np.asarray(model.x[...])))


@pytest.mark.parametrize("search", SEARCHES)
def test_has_aux_with_every_search_returns_the_aux_of_the_final_point(search):
    fn = _mgh()["beale"].fn

    def loss(model):
        x = model.x[...]
        return fn(x), {"x": x, "f": fn(x)}

    model = Flat(jnp.asarray(_mgh()["beale"].x0, jnp.float64))
    tx = nnxopt.lbfgs(linesearch=getattr(nnxopt.linesearch, search)())
    result = nnxopt.minimize(loss, model, tx=tx, has_aux=True, gtol=1e-8)
    np.testing.assert_array_equal(np.asarray(result.aux["x"]), np.asarray(model.x[...]))
    np.testing.assert_allclose(float(result.aux["f"]), float(result.fun), rtol=1e-12)
