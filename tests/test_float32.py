"""float32 robustness (issues 3 and 5): the default L-BFGS reaches the loss scipy
L-BFGS-B reaches in float64, at a float64-like cost.

Targets: what ``scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B")``
with its *default* options reaches in float64 from ``nnx_flat(problem)``'s
start, for the MLP regression and the 1-D Poisson PINN, from four seeds. They
are fixed numbers (recorded once, below): a target loss is a property of the
test, not of the machine; what scipy reaches on another CPU may differ a little
and is checked, with a tolerance, by the slow test at the end.

Cost: evaluations to first reach the target along the solve, float32 against
nnxopt in float64 (geometric mean over the seeds at most 1.5).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nnxopt
from nnxopt import linesearch
from nnxopt import problems as P
from nnxopt.linesearch.hager_zhang import default_epsilon

#: scipy L-BFGS-B with default options, float64, from ``nnx_flat`` of each
#: problem and seed (``test_recorded_scipy_default_losses`` recomputes them).
SCIPY_DEFAULT_F64_SEEDS = {
    ("mlp", 0): 2.301256882478456e-06,  # 185 evaluations
    ("mlp", 1): 7.181903873691994e-06,  # 346 evaluations
    ("mlp", 2): 1.3658643890468976e-05,  # 202 evaluations
    ("mlp", 3): 4.965103811563452e-06,  # 271 evaluations
    ("pinn1d", 0): 3.96070693412638e-06,  # 251 evaluations
    ("pinn1d", 1): 3.325240582511015e-05,  # 481 evaluations
    ("pinn1d", 2): 8.535062070346088e-06,  # 329 evaluations
    ("pinn1d", 3): 2.700056941114309e-05,  # 340 evaluations
}
SEEDS = (0, 1, 2, 3)
_MAKE = {"mlp": P.mlp_regression, "pinn1d": P.pinn_poisson_1d}
#: Seed 0, the start of the raw-loop traces below.
SCIPY_DEFAULT_F64 = {name: SCIPY_DEFAULT_F64_SEEDS[name, 0] for name in _MAKE}
#: float32 may need at most this many times the float64 evaluations.
MAX_EVAL_RATIO = 1.5
#: Iterations of the traced solves: enough for float64 and float32 to pass
#: the targets (about 230 to 420 iterations).
ITERS = 480


def _problem(name: str, dtype):
    fn, x0 = P.nnx_flat(_MAKE[name](dtype=dtype))
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


def test_default_linesearch_follows_dtype():
    f32 = nnxopt.lbfgs().init(jnp.zeros(3, jnp.float32)).linesearch_state
    f64 = nnxopt.lbfgs().init(jnp.zeros(3, jnp.float64)).linesearch_state
    assert isinstance(f32, linesearch.HagerZhangState)
    assert isinstance(f64, linesearch.MoreThuenteState)
    assert default_epsilon(jnp.float64) == 1e-6
    assert default_epsilon(jnp.float32) == 1e-3


@functools.cache
def _seed_runs(name: str, dtype_name: str) -> tuple:
    """``minimize`` from each seed's start: (evaluations to target, result, model).

    One ``loss_fn`` serves every seed (the seeds change the initial weights
    only), so each (problem, dtype) compiles once. float64 runs with ``ftol=0``:
    scipy's default ftol stops it on a plateau before scipy's own trajectory
    gets to the target; float32 runs with its defaults.
    """
    dtype = jnp.dtype(dtype_name)
    base = _MAKE[name](dtype=dtype)
    options = {"ftol": 0.0} if dtype == jnp.float64 else {}
    runs = []
    for seed in SEEDS:
        model = _MAKE[name](dtype=dtype, seed=seed).make_model()
        res = nnxopt.minimize(base.loss_fn, model, *base.batch, **options)
        h = res.history.trim()
        hit = np.nonzero(h.value <= SCIPY_DEFAULT_F64_SEEDS[name, seed])[0]
        runs.append((int(h.nfev[hit[0]]) if hit.size else None, res, model))
    return tuple(runs)


@pytest.mark.parametrize(
    # suite time: the MLP's eight solves (26 s) run with -m slow
    "name",
    [pytest.param("mlp", marks=pytest.mark.slow), "pinn1d"],
)
def test_minimize_float32_defaults_reach_scipy_float64_loss(name):
    # Past a few dozen iterations float32 and float64 trajectories part through
    # round-off, so single-seed ratios scatter (0.26x to 2.2x measured); the
    # claim is made on the geometric mean over four seeds, and every float32
    # solve must reach scipy's float64 loss.
    runs64, runs32 = _seed_runs(name, "float64"), _seed_runs(name, "float32")
    ratios = []
    for seed, (e64, _, _), (e32, res, model) in zip(SEEDS, runs64, runs32):
        assert e64 is not None, f"float64, seed {seed}: did not reach scipy's loss"
        assert e32 is not None, (seed, float(res.fun), res.message)
        assert res.status is nnxopt.Status.CONVERGED_GTOL, (seed, res.message)
        assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32
        ratios.append(e32 / e64)
    mean = float(np.exp(np.mean(np.log(ratios))))
    assert mean <= MAX_EVAL_RATIO, (mean, ratios)


def test_float32_rises_within_round_off_do_not_stop_the_solve():
    # Hager-Zhang's approximate Wolfe test accepts steps that raise the float32
    # loss within round-off; they must not meet ftol (a float32 PINN solve used
    # to stop on the first one, at 4.0e-5), and the solve ends on gtol.
    rises = 0
    for _, res, _ in _seed_runs("pinn1d", "float32"):
        values = res.history.trim().value
        rises += int(np.sum(np.diff(values[:-1]) > 0))
        assert res.status is nnxopt.Status.CONVERGED_GTOL
    assert rises > 0


@pytest.mark.slow
def test_recorded_scipy_default_losses_are_what_scipy_reaches():
    # scipy's default ftol (2.2e-9 relative decrease) stops it on a plateau
    # whose exact point depends on its trajectory, hence on the CPU's rounding;
    # on the two machines tried the loss stayed within a few percent. A factor
    # of 2 either way still makes the targets "scipy's float64 loss".
    import scipy.optimize

    for (name, seed), recorded in SCIPY_DEFAULT_F64_SEEDS.items():
        fn, x0 = P.nnx_flat(_MAKE[name](dtype=jnp.float64, seed=seed))
        vg = jax.jit(jax.value_and_grad(fn))

        def fun(x, vg=vg):
            f, g = vg(jnp.asarray(x))
            return float(f), np.asarray(g, np.float64)

        ref = scipy.optimize.minimize(fun, np.asarray(x0), jac=True, method="L-BFGS-B")
        assert recorded / 2 <= ref.fun <= 2 * recorded, (name, seed, ref.fun)


#: The float32 MLP, ITERS iterations of the same raw loop, ours (Hager-Zhang)
#: against optax lbfgs (zoom): the lowest loss reached, and the evaluations
#: spent. Measured: default ISA 1.4e-6 in 615 evaluations vs 4.1e-6 in 1220;
#: XLA held to SSE4.2 2.696e-6 in 609 vs 2.694e-6 in 906 (the trajectories
#: part through round-off, so which one passes scipy's 2.3e-6 first is not
#: portable). Ours must be as deep within 10% and spend fewer evaluations.
VS_OPTAX_LOSS_RATIO = 1.1


def test_hager_zhang_float32_mlp_as_deep_as_optax_in_fewer_evaluations():
    ours, ours_evals = _trace("mlp", "float32", "nnxopt")
    theirs, theirs_evals = _trace("mlp", "float32", "optax")
    assert np.min(ours) <= VS_OPTAX_LOSS_RATIO * np.min(theirs), (
        np.min(ours),
        np.min(theirs),
    )
    assert ours_evals[-1] < theirs_evals[-1], (ours_evals[-1], theirs_evals[-1])
