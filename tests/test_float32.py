"""float32 robustness (issues 3 and 5): the default L-BFGS reaches the loss scipy
L-BFGS-B reaches in float64, at a float64-like cost.

Targets: what ``scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B")``
with its *default* options reaches in float64 from ``nnx_flat(problem)``'s
start (``tests/problems.py`` records only the tight-tolerance run):

- ``mlp_sin_w32d1``: 2.3012568824784e-06 in 185 evaluations;
- ``pinn1d_w16d2``: 3.9607069341264e-06 in 251 evaluations.

Cost: evaluations to first reach the target along the solve, float32 against
the same solver in float64 (at most 1.5 times).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import problems as P
import pytest
from flax import nnx

import nnxopt
from nnxopt import linesearch
from nnxopt.linesearch.hager_zhang import default_epsilon

SCIPY_DEFAULT_F64 = {"mlp": 2.3012568824784e-06, "pinn1d": 3.9607069341264e-06}
#: float32 may need at most this many times the float64 evaluations.
MAX_EVAL_RATIO = 1.5
#: Iterations of the traced solves: enough for float64 and float32 to pass
#: the targets (about 230 to 420 iterations).
ITERS = 480


def _problem(name: str, dtype):
    make = {"mlp": P.mlp_regression, "pinn1d": P.pinn_poisson_1d}[name]
    fn, x0 = P.nnx_flat(make(dtype=dtype))
    return fn, jnp.asarray(x0, dtype)


@functools.cache
def _trace(name: str, dtype_name: str, solver: str):
    """Run ``ITERS`` iterations; return (values, cumulative evaluations)."""
    dtype = jnp.dtype(dtype_name)
    fn, x0 = _problem(name, dtype)
    tx = nnxopt.lbfgs() if solver == "nnxopt" else optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fn)

    def step(carry, _):
        x, state = carry
        v, g = value_and_grad(x, state=state)
        u, state = tx.update(g, state, x, value=v, grad=g, value_fn=fn)
        ls = state.linesearch_state if solver == "nnxopt" else state[-1]
        evals = optax.tree.get(ls, "info")
        evals = (
            evals.num_value_evals
            if solver == "nnxopt"
            else optax.tree.get(ls, "num_linesearch_steps")
        )
        return (optax.apply_updates(x, u), state), (optax.tree.get(ls, "value"), evals)

    run = jax.jit(lambda x: jax.lax.scan(step, (x, tx.init(x)), None, length=ITERS))
    _, (values, evals) = run(x0)
    return np.asarray(values), 1 + np.cumsum(np.asarray(evals))


def _evals_to(name: str, dtype_name: str, solver: str = "nnxopt") -> int | None:
    values, nfev = _trace(name, dtype_name, solver)
    hit = np.nonzero(values <= SCIPY_DEFAULT_F64[name])[0]
    return int(nfev[hit[0]]) if hit.size else None


def test_default_linesearch_follows_dtype():
    f32 = nnxopt.lbfgs().init(jnp.zeros(3, jnp.float32)).linesearch_state
    f64 = nnxopt.lbfgs().init(jnp.zeros(3, jnp.float64)).linesearch_state
    assert isinstance(f32, linesearch.HagerZhangState)
    assert isinstance(f64, linesearch.MoreThuenteState)
    assert default_epsilon(jnp.float64) == 1e-6
    assert default_epsilon(jnp.float32) == 1e-3


def _minimize_evals_to_target(name: str, dtype, **options):
    make = {"mlp": P.mlp_regression, "pinn1d": P.pinn_poisson_1d}[name]
    q = make(dtype=dtype)
    model = q.make_model()
    res = nnxopt.minimize(q.loss_fn, model, *q.batch, **options)
    h = res.history.trim()
    hit = np.nonzero(np.asarray(h.value) <= SCIPY_DEFAULT_F64[name])[0]
    assert hit.size, (name, dtype, float(res.fun), res.status)
    return res, model, h, int(np.asarray(h.nfev)[hit[0]])


@pytest.mark.parametrize("name", ["mlp", "pinn1d"])
def test_minimize_float32_defaults_reach_scipy_float64_loss(name):
    # float64 with ftol=0: scipy's default ftol stops both problems on a
    # plateau before scipy's own (luckier) trajectory gets there.
    _, _, _, evals64 = _minimize_evals_to_target(name, jnp.float64, ftol=0.0)
    res, model, h, evals32 = _minimize_evals_to_target(name, jnp.float32)
    assert res.status is nnxopt.Status.CONVERGED_GTOL, res.message
    assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32
    assert evals32 <= MAX_EVAL_RATIO * evals64, (evals32, evals64)
    if name == "pinn1d":
        # Hager-Zhang's approximate Wolfe test accepts steps that raise the
        # float32 loss within round-off; they must not meet ftol (this solve
        # used to stop on the first one, at 4.0e-5).
        rises = np.nonzero(np.diff(np.asarray(h.value)) > 0)[0]
        assert rises.size and rises[0] < len(h.value) - 2


def test_hager_zhang_float32_mlp_beats_optax_zoom():
    ours = _evals_to("mlp", "float32")
    theirs = _evals_to("mlp", "float32", "optax")
    assert ours is not None
    assert theirs is None or theirs > 3 * ours, (ours, theirs)
