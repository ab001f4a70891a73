"""Tests of nnxopt.bfgs (dense BFGS, self-scaled BFGS and Broyden).

References: scipy ``minimize(method="BFGS")`` in float64 run at test time, the
textbook BFGS and DFP inverse updates written out in numpy, the secant
equation ``H y = s`` after each update, the eigenvalues of ``H`` (positive
definiteness), closed-form minima, a counting objective.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from flax import nnx

# The fixed-step loop and the fake line search of the L-BFGS tests (tests/ is on
# sys.path under pytest).
from test_lbfgs import _fake_search, _fixed_steps

import nnxopt
from nnxopt import problems as P
from nnxopt._bfgs import BfgsState
from nnxopt._broyden import inverse_hessian_update, scaling_parameters
from nnxopt._minimize import minimize
from nnxopt._status import Status

#: Round-off between two float64 evaluations of one formula on O(1) data.
RTOL_F64 = 1e-12
GTOL = 1e-8
#: Our evaluations / scipy BFGS's. Both run BFGS with a strong-Wolfe search
#: whose first trial is the unit step; they differ in the initial matrix
#: (Shanno-Phua scaling here, H0 = I in scipy) and the search (Moré-Thuente
#: here, scipy's dcsrch), so trajectories differ; 1.5 leaves room for that while
#: catching a wrong update (which costs several times more evaluations).
MAX_NFEV_RATIO = 1.5
#: Each variant as the keyword arguments of nnxopt.bfgs.
VARIANTS = {
    "bfgs": {},
    "ssbfgs": {"self_scaling": True},
    "ssbroyden": {"self_scaling": True, "broyden_phi": None},
}


class Vector(nnx.Module):
    def __init__(self, x0):
        self.x = nnx.Param(jnp.asarray(x0, jnp.float64))


def scipy_bfgs(fn, x0):
    value_and_grad = jax.jit(jax.value_and_grad(fn))

    def fun(x):
        f, g = value_and_grad(jnp.asarray(x))
        return float(f), np.asarray(g, np.float64)

    return scipy.optimize.minimize(
        fun, np.asarray(x0, np.float64), jac=True, method="BFGS",
        options={"gtol": GTOL, "maxiter": 2000},
    )  # fmt: skip


def solve(problem, maxiter=500, **kwargs):
    """minimize with bfgs, counting the evaluations on the host."""
    counts = {"f": 0}

    def bump():
        counts["f"] += 1

    def loss(m):
        value = problem.fn(m.x[...])
        jax.debug.callback(bump)
        return value

    model = Vector(problem.x0)
    # scipy's BFGS stops on gtol only: ftol=0 makes both stop on the same test.
    result = minimize(
        loss, model, tx=nnxopt.bfgs(**kwargs), maxiter=maxiter, gtol=GTOL, ftol=0.0
    )
    return result, model, counts["f"]


# --- MGH problems against scipy BFGS ----------------------------------------------


@pytest.mark.parametrize("name", ["rosenbrock", "beale", "helical_valley"])
def test_mgh_matches_scipy_bfgs(name):
    problem = P.problem(name)
    ref = scipy_bfgs(problem.fn, problem.x0)
    result, model, evaluated = solve(problem)
    assert ref.success and result.status == Status.CONVERGED_GTOL
    # Both stop at ||g||_inf <= 1e-8 near a minimum with f* = 0 and a Hessian of
    # norm O(1e3) at most: f - f* <= ||g||^2 / (2 mu) is far below 1e-10, and the
    # minimiser agrees to ||g|| / mu (1e-6 for mu >= 1e-2 on these problems).
    assert abs(float(result.fun) - ref.fun) <= 1e-10
    np.testing.assert_allclose(model.x[...], ref.x, atol=1e-5)
    assert result.nfev <= MAX_NFEV_RATIO * ref.nfev
    # Value/gradient reuse: nfev = 1 + the line searches' evaluations. nfev is
    # what was evaluated; without reuse every iteration would cost its search
    # plus one evaluation (>= 2), with it an accepted unit step costs one.
    hist = result.history.trim()
    assert result.nfev == evaluated == result.njev
    assert hist.nfev[0] == 1 and np.min(np.diff(hist.nfev)) == 1


# --- the update: secant equation, positive definiteness, reduction to BFGS --------


def _random_pair(seed, n=6):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    h = a @ a.T + n * np.eye(n)
    s = rng.normal(size=n)
    y = s + 0.3 * rng.normal(size=n)  # s·y > 0 for these seeds (asserted)
    assert s @ y > 0
    return h, s, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_at_tau_phi_one_is_textbook_bfgs(seed):
    h, s, y = _random_pair(seed)
    rho = 1 / (s @ y)
    eye = np.eye(len(s))
    bfgs = (eye - rho * np.outer(s, y)) @ h @ (eye - rho * np.outer(y, s))
    bfgs += rho * np.outer(s, s)
    out = np.asarray(inverse_hessian_update(jnp.asarray(h), s, y, 1.0, 1.0))
    np.testing.assert_allclose(out, bfgs, rtol=RTOL_F64 * 100, atol=RTOL_F64)
    # phi = 0 is DFP, tau scales the H part only.
    hy = h @ y
    dfp = h - np.outer(hy, hy) / (y @ hy) + rho * np.outer(s, s)
    out = np.asarray(inverse_hessian_update(jnp.asarray(h), s, y, 1.0, 0.0))
    np.testing.assert_allclose(out, dfp, rtol=RTOL_F64 * 100, atol=RTOL_F64)


def test_scaling_parameters_reduce_to_bfgs():
    one = jnp.float64(1.0)
    # H y = s already (b = h = 1): every variant is plain BFGS.
    for kwargs in VARIANTS.values():
        tau, phi = scaling_parameters(
            one, one, 5, kwargs.get("self_scaling", False),
            kwargs.get("broyden_phi", 1.0),
        )  # fmt: skip
        assert (float(tau), float(phi)) == (1.0, 1.0)
    # SSBFGS: tau = min(1, s·y / s·B s) is 1 whenever s·B s <= s·y (b <= 1).
    for b in (0.25, 0.9, 1.0):
        tau, phi = scaling_parameters(jnp.float64(b), jnp.float64(3.0), 5, True, 1.0)
        assert (float(tau), float(phi)) == (1.0, 1.0)
    tau, _ = scaling_parameters(jnp.float64(4.0), one, 5, True, 1.0)
    assert float(tau) == 0.25  # Oren-Luenberger s·y / s·B s below 1


@pytest.mark.parametrize("seed", range(6))
def test_ssbroyden_update_keeps_secant_and_positive_definiteness(seed):
    h, s, y = _random_pair(seed)
    b = (s @ np.linalg.solve(h, s)) / (s @ y)
    hh = (y @ h @ y) / (s @ y)
    for self_scaling in (False, True):
        tau, phi = scaling_parameters(
            jnp.float64(b), jnp.float64(hh), len(s), self_scaling, None
        )
        out = np.asarray(inverse_hessian_update(jnp.asarray(h), s, y, tau, phi))
        np.testing.assert_allclose(out @ y, s, rtol=1e-10, atol=1e-12)
        assert np.linalg.eigvalsh(out).min() > 0
        np.testing.assert_array_equal(out, out.T)


def _run_steps(tx, fn, x0, num_steps):
    state = tx.init(x0)
    value_and_grad = optax.value_and_grad_from_state(fn)

    @jax.jit
    def step(x, state):
        value, grad = value_and_grad(x, state=state)
        updates, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=fn)
        return optax.apply_updates(x, updates), state, grad

    x, out = x0, []
    for _ in range(num_steps):
        x_new, state, grad = step(x, state)
        out.append((x, grad, state))
        x = x_new
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_keep_secant_and_positive_definiteness_and_reach_scipy_minimum(
    variant,
):
    # Rosenbrock from (-1.2, 1) crosses the region where its Hessian is
    # indefinite (x2 > x1^2 + 0.005): the pairs there must not break H.
    problem = P.problem("rosenbrock")
    fn = problem.fn
    x0 = jnp.asarray(problem.x0, jnp.float64)
    steps = _run_steps(nnxopt.bfgs(**VARIANTS[variant]), fn, x0, 80)
    checked = indefinite = 0
    for (x0_, g0, st0), (x1, g1, st1) in itertools.pairwise(steps):
        if int(st1.num_updates) == 0:
            continue  # H is read as the identity (a reset)
        h = np.asarray(st1.inv_hessian)
        # Exactly: every term of the update is sign * p_i p_j (nnxopt._bfgs).
        np.testing.assert_array_equal(h, h.T)
        assert np.linalg.eigvalsh(h).min() > 0
        x = np.asarray(x0_)
        # Hessian of Rosenbrock, closed form; indefinite where x2 > x1^2 + 0.005.
        hess = np.array([[2 - 400 * (x[1] - 3 * x[0] ** 2), -400 * x[0]],
                         [-400 * x[0], 200.0]])  # fmt: skip
        indefinite += np.linalg.eigvalsh(hess).min() < 0
        folded = int(st1.num_updates) == int(st0.num_updates) + 1
        if not folded:
            continue
        s, y = np.asarray(x1 - x0_), np.asarray(g1 - g0)
        # Round-off of one rank-two update: a few eps * ||H|| ||y||.
        tol = 1e-10 * (np.linalg.norm(h, 2) * np.linalg.norm(y) + np.linalg.norm(s))
        assert np.linalg.norm(h @ y - s) <= tol
        checked += 1
    assert checked >= 10 and indefinite >= 1
    # Every variant reaches scipy BFGS's minimum (f* = 0, ||g|| <= 1e-8 there:
    # f - f* and |x - x*| are below the tolerances, see test_mgh_matches_scipy_bfgs).
    ref = scipy_bfgs(fn, problem.x0)
    x_final = steps[-1][0]
    assert abs(float(fn(x_final)) - ref.fun) <= 1e-10
    np.testing.assert_allclose(x_final, ref.x, atol=1e-5)


# --- failures: non-finite trials, line-search statuses ------------------------------


def test_repeated_nan_trials_reset_and_return_to_last_finite_point():
    # f = (x - 5)^2 / 10, NaN beyond |x| = 0.8. By hand, from x = 0 with unit
    # steps: H = I, trial 1 (NaN), shrink to 0.5; the pair (0.5, 0.1) gives
    # H = s/y = 5 (in one dimension the secant equation fixes H for every
    # variant): the Newton step goes to 5; three halvings (2.75, 1.625, 1.0625)
    # stay NaN, the 4th NaN trial gives up: back to 0.5, H = I, radius
    # 0.5 * 0.5625; the gradient step of that length: 0.78125.
    f = lambda x: jnp.sum(0.1 * (x - 5) ** 2 + 0.0 * jnp.sqrt(0.64 - x**2))  # noqa: E731
    xs, state = _fixed_steps(nnxopt.bfgs(learning_rate=1.0), f, jnp.array([0.0]), 8)
    want = [0.0, 1.0, 0.5, 5.0, 2.75, 1.625, 1.0625, 0.5, 0.78125]
    np.testing.assert_allclose(np.concatenate(xs), want, rtol=1e-14)
    info = state.bfgs_info
    assert (int(info.num_nonfinite), int(info.num_resets)) == (5, 1)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))


@pytest.mark.parametrize(
    ("status", "resets"),
    [(Status.SUCCESS, 0), (Status.LINESEARCH_FAILED, 1)],
)
def test_linesearch_status_resets_inverse_hessian(status, resets):
    tx = nnxopt.bfgs(linesearch=_fake_search(status))
    f = lambda x: jnp.sum(jnp.array([1.0, 4.0]) * x**2)  # noqa: E731
    _, state = _fixed_steps(tx, f, jnp.array([1.0, 1.0]), 3)
    # Update 2 sees the status with H = I (nothing to discard), then folds its
    # pair; update 3 discards H and folds its own.
    assert int(state.bfgs_info.num_resets) == resets
    assert int(state.num_updates) == (1 if resets else 2)


# --- jit, vmap, Optimizer --------------------------------------------------------


def shifted_rosenbrock(x, a):
    return (a - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def test_vmap_of_a_step_loop_solves_a_batch():
    tx = nnxopt.bfgs()

    def run(a):
        fn = lambda x: shifted_rosenbrock(x, a)  # noqa: E731
        value_and_grad = optax.value_and_grad_from_state(fn)
        x0 = jnp.asarray([-1.2, 1.0])

        def body(_, carry):
            x, state = carry
            value, grad = value_and_grad(x, state=state)
            upd, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=fn)
            return optax.apply_updates(x, upd), state

        return jax.lax.fori_loop(0, 80, body, (x0, tx.init(x0)))

    a = jnp.asarray([1.0, -0.5, 2.0])
    x, state = jax.jit(jax.vmap(run))(a)
    assert isinstance(state, BfgsState) and state.inv_hessian.shape == (3, 2, 2)
    # Closed form: the minimum of each shifted Rosenbrock is (a, a^2).
    np.testing.assert_allclose(x, jnp.stack([a, a**2], axis=1), atol=1e-6)


def test_float32_uses_hager_zhang_and_reaches_the_minimum():
    problem = P.problem("rosenbrock")
    x0 = jnp.asarray(problem.x0, jnp.float32)
    steps = _run_steps(nnxopt.bfgs(self_scaling=True), problem.fn, x0, 80)
    x, _, state = steps[-1]
    assert x.dtype == state.inv_hessian.dtype == jnp.float32
    assert type(state.linesearch_state).__name__ == "HagerZhangState"
    # Closed form x* = (1, 1); float32 resolves f near x* to ~1e-7, which
    # places x to ~sqrt(1e-7 / lambda_min(Hessian) = 0.4) ~ 5e-4.
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-3)


def test_init_has_the_types_update_returns():
    x = {"w": jnp.ones((2, 2), jnp.float32), "b": jnp.zeros(3, jnp.float64)}
    tx = nnxopt.bfgs()
    state = tx.init(x)

    def fn(p):
        return jnp.sum(p["w"] ** 2) + jnp.sum((p["b"] - 1) ** 2)

    def update(state):
        value, grad = jax.value_and_grad(fn)(x)
        return tx.update(grad, state, x, value=value, grad=grad, value_fn=fn)[1]

    new = jax.eval_shape(update, state)  # abstract: nothing is run
    avals = jax.tree.map(lambda a: (a.shape, a.dtype, a.weak_type), (state, new))
    assert avals[0] == avals[1]
    # Mixed float32/float64 leaves: H in the promoted dtype, updates per leaf.
    assert state.inv_hessian.dtype == jnp.float64 and state.inv_hessian.shape == (7, 7)


def test_optimizer_minimize_step_and_update():
    problem = P.problem("beale")
    ref = scipy_bfgs(problem.fn, problem.x0)

    def loss(m):
        return problem.fn(m.x[...])

    model = Vector(problem.x0)
    opt = nnxopt.Optimizer(model, nnxopt.bfgs(), wrt=nnx.Param)
    for _ in range(40):
        opt.minimize_step(model, loss)
    # scipy's gtol-1e-8 minimum, f* = 0: same tolerance as the MGH test.
    assert abs(float(loss(model)) - ref.fun) <= 1e-10

    @nnx.jit
    def train_step(model, opt):
        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads, value=value, value_fn=loss)

    model = Vector(problem.x0)
    opt = nnxopt.Optimizer(model, nnxopt.bfgs(), wrt=nnx.Param)
    for _ in range(40):
        train_step(model, opt)
    assert abs(float(loss(model)) - ref.fun) <= 1e-10


# --- errors ---------------------------------------------------------------------


def test_bad_arguments():
    x = jnp.zeros(3)
    with pytest.raises(TypeError, match=r"nnxopt.bfgs: every leaf of params.*int32"):
        nnxopt.bfgs().init({"w": x, "n": jnp.arange(2, dtype=jnp.int32)})
    with pytest.raises(ValueError, match=r"max_dense_bytes=64.*nnxopt.lbfgs"):
        nnxopt.bfgs(max_dense_bytes=64).init(x)
    with pytest.raises(ValueError, match=r"linesearch=.*is not a line search"):
        nnxopt.bfgs(linesearch=optax.adam(1e-3)).init(x)
    with pytest.raises(TypeError, match=r"linesearch must be an optax"):
        nnxopt.bfgs(linesearch="zoom")
    with pytest.raises(ValueError, match=r"either learning_rate"):
        nnxopt.bfgs(learning_rate=0.1, linesearch=nnxopt.linesearch.zoom())
    with pytest.raises(ValueError, match=r"broyden_phi must be"):
        nnxopt.bfgs(broyden_phi=2.0)
    with pytest.raises(TypeError, match=r"self_scaling must be a bool"):
        nnxopt.bfgs(self_scaling=1)
    tx = nnxopt.bfgs()
    with pytest.raises(TypeError, match=r"missing the keyword argument\(s\) value_fn"):
        tx.update(x, tx.init(x), x, value=jnp.zeros(()), grad=x)
