"""Every line search, through ``nnxopt.minimize``, on the known-minimum library.

References: the published minima of Moré, Garbow and Hillstrom (1981) and
scipy L-BFGS-B in float64 run here, at test time, with the same gtol, ftol and
memory (value reached and evaluations used).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from flax import nnx

import nnxopt
from nnxopt import problems as P

#: Compared with third-party references computed here: run again by
#: ``run.py test`` with XLA held to SSE4.2 (see ``ISA_GUARD`` there).
pytestmark = pytest.mark.reference

#: every search on these; the default search (more_thuente) on all of them.
PROBLEMS = ("rosenbrock", "beale", "helical_valley", "wood")
MORE = ("freudenstein_roth", "bard", "box_3d", "powell_singular")
SEARCHES = ("more_thuente", "zoom", "hager_zhang", "backtracking")
#: evaluations allowed, as a multiple of scipy's count on the same machine
#: (measured geometric means: 1.0 for the Wolfe searches, 1.9 for
#: backtracking). Both counts are trajectories whose rounding differs between
#: CPUs; on these well-scaled problems each moved by at most a few evaluations
#: between instruction sets, which the 30% (Wolfe) to 160% margins absorb.
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
def _scipy(name):
    """scipy L-BFGS-B in float64 from the standard start, with SCIPY_OPTIONS."""
    problem = _mgh()[name]
    value_and_grad = jax.jit(jax.value_and_grad(problem.fn))

    def fun(x):
        f, g = value_and_grad(jnp.asarray(x, jnp.float64))
        return float(f), np.asarray(g, np.float64)

    return scipy.optimize.minimize(
        fun, problem.x0, jac=True, method="L-BFGS-B", options=P.SCIPY_OPTIONS
    )


@functools.cache
def _loss(name):
    fn = _mgh()[name].fn
    return lambda model: fn(model.x[...])


CASES = [(n, s) for n in PROBLEMS for s in SEARCHES] + [
    (n, "more_thuente") for n in MORE
]


@pytest.mark.parametrize(("name", "search"), CASES)
def test_each_search_reaches_scipy_minimum_on_the_library(name, search):
    problem, ref = _mgh()[name], _scipy(name)
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
