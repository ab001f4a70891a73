"""Tests of ``nnxopt.solve``, ``nnxopt.Solver`` and resumable solver state.

References: scipy L-BFGS-B in float64 (computed here), closed forms, and
nnxopt against itself in one process (exact ``==``: resume and the user-written
loop must reproduce the one-call solve bit for bit).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from flax import nnx

import nnxopt
from nnxopt import Solution, Solver, SolverState, Status, solve
from nnxopt import problems as P
from nnxopt.linesearch import SearchStatus

#: nnxopt's evaluations may exceed scipy L-BFGS-B's by at most this factor
#: (the same bound as tests/test_minimize.py: different line searches).
NFEV_FACTOR = 2.0
EXT_ROSEN = P.extended_rosenbrock(n=10)
#: Watson (n=9) takes about 60 iterations from its standard start: a solve of
#: 40 iterations stops on maxiter, so 20 + 20 is a real resume.
WATSON = P.watson()


def ext_rosen(p):
    """Extended Rosenbrock on a nested pytree: the flat vector split in pieces."""
    x = jnp.concatenate([p["a"], p["b"]["c"], p["b"]["d"]])
    return EXT_ROSEN.fn(x)


def watson(p):
    return WATSON.fn(jnp.concatenate([p["a"], p["b"]["c"], p["b"]["d"]]))


def nested(x):
    x = jnp.asarray(x, jnp.float64)
    return {"a": x[:4], "b": {"c": x[4:7], "d": x[7:]}}


def flat(p):
    return np.concatenate([np.asarray(p["a"]), np.asarray(p["b"]["c"]), p["b"]["d"]])


def same(a, b):
    """Bitwise equality of two pytrees (nan equals nan)."""
    eq = jax.tree.map(
        lambda x, y: np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True), a, b
    )
    return all(jax.tree.leaves(eq)) and jax.tree.structure(a) == jax.tree.structure(b)


@pytest.fixture(scope="module")
def runs():
    """One solve of 40 iterations and one of 20 + 20 (resumed)."""
    x0 = nested(WATSON.x0)
    whole = solve(watson, x0, maxiter=40)
    first = solve(watson, x0, maxiter=20)
    second = solve(watson, first.params, maxiter=40, state=first.state)
    return whole, first, second


# ---------------------------------------------------------------------------
# Against scipy, float64.


def test_nested_pytree_reaches_scipy_minimum():
    sol = solve(ext_rosen, nested(EXT_ROSEN.x0))
    fn = jax.jit(jax.value_and_grad(EXT_ROSEN.fn))
    ref = scipy.optimize.minimize(
        lambda x: tuple(np.asarray(v, np.float64) for v in fn(jnp.asarray(x))),
        EXT_ROSEN.x0,
        jac=True,
        method="L-BFGS-B",
    )
    assert bool(sol.success), sol.message
    assert jax.tree.structure(sol.params) == jax.tree.structure(nested(EXT_ROSEN.x0))
    # Both stop near the minimum x* = 1 (f* = 0): gtol = 1e-5 on the gradient
    # bounds the distance by about gtol / lambda_min(H) ~ 1e-5 / 0.4 here.
    np.testing.assert_allclose(flat(sol.params), EXT_ROSEN.x_star, atol=1e-4)
    assert float(sol.fun) <= max(10 * ref.fun, 1e-10)
    assert int(sol.nfev) <= NFEV_FACTOR * ref.nfev
    # the loss at the returned point, up to the round-off of another compilation
    assert float(sol.fun) == pytest.approx(float(ext_rosen(sol.params)), abs=1e-15)


def test_linear_least_squares_closed_form_on_a_tuple():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 4)), rng.normal(size=20)

    def fun(p, a, b):
        w, c = p
        return jnp.sum((a @ w + c - b) ** 2)

    sol = solve(fun, (jnp.zeros(4), jnp.zeros(())), jnp.asarray(a), jnp.asarray(b))
    design = np.hstack([a, np.ones((20, 1))])
    x_star = np.linalg.lstsq(design, b, rcond=None)[0]
    # gtol = 1e-5 with a Hessian 2 A^T A (smallest eigenvalue > 1 here).
    np.testing.assert_allclose(np.asarray(sol.params[0]), x_star[:4], atol=1e-5)
    np.testing.assert_allclose(float(sol.params[1]), x_star[4], atol=1e-5)
    assert int(sol.status) == Status.CONVERGED_GTOL


# ---------------------------------------------------------------------------
# Resume: 20 + 20 iterations equal 40, bit for bit.


def test_resume_equals_one_call(runs):
    whole, first, second = runs
    assert int(first.nit) == 20 and int(first.status) == Status.MAX_ITER
    assert int(whole.nit) == 40 and int(whole.status) == Status.MAX_ITER
    assert same(second.params, whole.params)
    assert same(second.state, whole.state)
    assert (int(second.nit), int(second.nfev)) == (int(whole.nit), int(whole.nfev))
    # The second call's history starts at the resumed point.
    hist = second.history.trim()
    assert len(hist.value) == 21 and hist.value[0] == float(first.state.value)


def test_history_is_bounded_and_its_last_entry_is_the_latest_iterate(runs, monkeypatch):
    whole, _, _ = runs
    monkeypatch.setattr(nnxopt._loop, "MAX_HISTORY", 10)
    short = solve(watson, nested(WATSON.x0), maxiter=40)
    assert same(short.params, whole.params) and int(short.nit) == 40
    full = whole.history
    assert len(short.history.value) == 11
    for got, want in zip(short.history, full, strict=True):
        np.testing.assert_array_equal(np.asarray(got)[:10], np.asarray(want)[:10])
        assert np.asarray(got)[10] == np.asarray(want)[40]


def test_maxiter_is_a_budget_of_the_whole_solve(runs):
    _, first, _ = runs
    again = solve(watson, first.params, maxiter=20, state=first.state)
    assert int(again.nit) == 20 and int(again.status) == Status.MAX_ITER
    with pytest.raises(ValueError, match=r"nnxopt\.solve: maxiter=10 .* 20 iterations"):
        solve(watson, first.params, maxiter=10, state=first.state)


def test_user_loop_equals_solve(runs):
    whole, _, _ = runs
    solver = Solver(watson, maxiter=40)
    step = jax.jit(solver.step)
    state = jax.jit(solver.init)(nested(WATSON.x0))
    while not solver.terminate(state):
        state = step(state)
    mine = Solution.from_state(solver, state)
    # A jitted step and the fused loop are two programs that XLA compiles
    # separately: equal bit for bit at XLA's default settings, but XLA does
    # not promise it, and the suite's cheaper compile (conftest.FAST_COMPILE)
    # rounds some expression differently; Watson (condition ~1e9 near its
    # minimum) amplifies that over 40 iterations to at most 3.1e-8 of a leaf's
    # largest entry (measured). Counts and statuses exact; floats to 1e-6 of
    # each leaf's scale, 30x that.
    for got, want in zip(
        jax.tree.leaves((mine.params, mine.state)),
        jax.tree.leaves((whole.params, whole.state)),
        strict=True,
    ):
        got, want = np.asarray(got), np.asarray(want)
        if np.issubdtype(want.dtype, np.inexact):
            scale = float(np.max(np.abs(want), initial=0.0))
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)
        else:
            np.testing.assert_array_equal(got, want)
    # jitted steps do not retrace: the state keeps its types from init on.
    assert step._cache_size() == 1


def test_state_is_a_pytree_of_arrays_with_stable_types(runs):
    _, first, _ = runs
    leaves = jax.tree.leaves(first.state)
    assert all(isinstance(x, jax.Array) and not x.weak_type for x in leaves)
    assert first.state.nit.dtype == jnp.int32
    # optax.lbfgs's init has weakly typed fields; the state has none.
    state = Solver(watson, tx=optax.lbfgs()).init(nested(WATSON.x0))
    assert not any(x.weak_type for x in jax.tree.leaves(state))


# ---------------------------------------------------------------------------
# minimize is the NNX edge of solve.


class Vector(nnx.Module):
    def __init__(self, x0):
        self.x = nnx.Param(jnp.asarray(x0, jnp.float64))


def vector_loss(model):
    return WATSON.fn(model.x[...])


def test_minimize_and_solve_take_the_same_iterations():
    model = Vector(WATSON.x0)
    result = nnxopt.minimize(vector_loss, model, maxiter=30)
    sol = solve(WATSON.fn, jnp.asarray(WATSON.x0), maxiter=30)
    assert (result.nit, result.nfev, result.njev) == (
        int(sol.nit),
        int(sol.nfev),
        int(sol.njev),
    )
    assert np.array_equal(np.asarray(model.x[...]), np.asarray(sol.params))


def test_minimize_resumes_bit_for_bit():
    whole_model, model = Vector(WATSON.x0), Vector(WATSON.x0)
    whole = nnxopt.minimize(vector_loss, whole_model, maxiter=40)
    first = nnxopt.minimize(vector_loss, model, maxiter=20)
    second = nnxopt.minimize(vector_loss, model, maxiter=40, state=first.state)
    assert first.nit == 20 and whole.nit == 40
    assert (second.nit, second.nfev) == (whole.nit, whole.nfev)
    assert np.array_equal(np.asarray(model.x[...]), np.asarray(whole_model.x[...]))
    assert same(second.state, whole.state)
    with pytest.raises(TypeError, match=r"nnxopt\.minimize: state= comes from another"):
        nnxopt.minimize(vector_loss, Vector(jnp.zeros(3)), state=first.state)


# ---------------------------------------------------------------------------
# Pure: jit, vmap, no retrace.


def test_jit_and_vmap_of_solve():
    def fun(x, c):
        return jnp.sum((x - c) ** 2) + 0.1 * jnp.sum(x**4)

    def run(c):
        return solve(fun, jnp.zeros(2), c, maxiter=50)

    cs = jnp.asarray([[1.0, -1.0], [2.0, 0.5], [0.0, 3.0]])
    batched = jax.jit(jax.vmap(run))(cs)
    assert batched.nit.shape == (3,) and batched.params.shape == (3, 2)
    for i in range(3):
        one = run(cs[i])
        # Batched and single solves differ in XLA's fusion only: round-off.
        np.testing.assert_allclose(batched.params[i], one.params, atol=1e-10)
        assert int(batched.status[i]) == Status.CONVERGED_GTOL
        # the closed-form stationarity condition 2 (x - c) + 0.4 x^3 = 0
        x = np.asarray(batched.params[i])
        assert np.max(np.abs(2 * (x - cs[i]) + 0.4 * x**3)) <= 1e-5


def test_no_retrace_with_new_data():
    traces = {"n": 0}

    def fun(x, a, b):
        traces["n"] += 1
        return jnp.sum((a @ x - b) ** 2)

    rng = np.random.default_rng(1)
    data = [
        (jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=6)))
        for _ in range(2)
    ]
    solve(fun, jnp.zeros(3), *data[0], tx=optax.lbfgs())
    first = traces["n"]
    sol = solve(fun, jnp.zeros(3), *data[1], tx=optax.lbfgs())
    assert first > 0 and traces["n"] == first
    x_star = np.linalg.lstsq(np.asarray(data[1][0]), np.asarray(data[1][1]), rcond=None)
    np.testing.assert_allclose(np.asarray(sol.params), x_star[0], atol=1e-5)


# ---------------------------------------------------------------------------
# The protocol: a user's own transform.


def _halving(reuse: bool) -> optax.GradientTransformationExtraArgs:
    """A steepest descent with Armijo halving; with ``reuse`` its state follows
    the protocol (value, grad, learning_rate, evaluation counts)."""

    class State(NamedTuple):
        value: jax.Array
        grad: jax.Array
        learning_rate: jax.Array
        num_value_evals: jax.Array
        num_grad_evals: jax.Array

    class Plain(NamedTuple):
        step: jax.Array

    def init(params):
        if not reuse:
            return Plain(jnp.zeros((), jnp.int32))
        z = jnp.zeros((), params.dtype)
        return State(z, jnp.zeros_like(params), z, jnp.int32(0), jnp.int32(0))

    def update(updates, state, params, *, value, grad, value_fn, **extra):
        def body(c):
            lr, _, n = c
            return lr / 2, value_fn(params - lr / 2 * grad), n + 1

        lr, f, n = jax.lax.while_loop(
            lambda c: c[1] > value - 1e-4 * c[0] * jnp.sum(grad**2),
            body,
            (jnp.ones(()), value_fn(params - grad), jnp.int32(1)),
        )
        if not reuse:
            return -lr * grad, Plain(state.step + 1)
        f, g = jax.value_and_grad(value_fn)(params - lr * grad)
        return -lr * grad, State(f, g, lr, n + 1, jnp.int32(1))

    return optax.GradientTransformationExtraArgs(init, update)


@pytest.mark.parametrize("reuse", [True, False])
def test_user_transform_with_and_without_the_protocol(reuse):
    counts = {"f": 0}

    def fun(x):
        jax.debug.callback(lambda: counts.__setitem__("f", counts["f"] + 1))
        return jnp.sum(jnp.asarray([1.0, 10.0]) * (x - 1.0) ** 2)

    sol = solve(fun, jnp.zeros(2), tx=_halving(reuse), ftol=0.0, maxiter=500)
    jax.effects_barrier()
    assert int(sol.status) == Status.CONVERGED_GTOL
    # gtol = 1e-5 and a Hessian diag(2, 20): |x - 1| <= 1e-5 / 2.
    np.testing.assert_allclose(np.asarray(sol.params), [1.0, 1.0], atol=1e-5)
    if reuse:
        # The protocol: the stored value and gradient are reused (no evaluation
        # by the loop) and the transform's own evaluations are counted.
        assert int(sol.nfev) == counts["f"]
    else:
        # Without it: one evaluation by the loop per iteration (+1 at the
        # start); the transform's own evaluations are not known to the loop.
        assert int(sol.nfev) == int(sol.nit) + 1 < counts["f"]


# ---------------------------------------------------------------------------
# Bad input: clear errors naming the call and the argument.


def test_bad_input_errors(runs):
    _, first, _ = runs
    x0 = nested(WATSON.x0)
    with pytest.raises(TypeError, match=r"nnxopt\.solve: params is a Solution"):
        solve(watson, first)
    with pytest.raises(TypeError, match=r"state= comes from another problem"):
        solve(watson, {"a": x0["a"], "b": x0["b"]["c"]}, state=first.state)
    with pytest.raises(TypeError, match=r"state= comes from another problem"):
        solve(watson, jax.tree.map(lambda x: x.astype(jnp.float32), x0),
              state=first.state)  # fmt: skip
    with pytest.raises(TypeError, match=r"pass sol\.state, not sol"):
        solve(watson, x0, state=first)
    with pytest.raises(TypeError, match=r"real floating-point.*\['n'\]"):
        solve(lambda p: jnp.sum(p["x"] ** 2), {"x": jnp.ones(2), "n": jnp.int32(3)})
    with pytest.raises(ValueError, match=r"nnxopt\.solve: gtol must be >= 0"):
        solve(watson, x0, gtol=-1.0)
    assert isinstance(first.state, SolverState)


def test_search_status_has_its_own_enum_and_old_names_warn():
    with pytest.warns(DeprecationWarning, match=r"linesearch\.SearchStatus\.SUCCESS"):
        old = Status.SUCCESS
    assert old is SearchStatus.SUCCESS
    assert all(s.message for s in SearchStatus) and all(s.message for s in Status)
    assert not Status.INTERRUPTED.success and "Ctrl-C" in Status.INTERRUPTED.message
    # The failure codes a solve reports are the search's own.
    assert SearchStatus.LINESEARCH_FAILED == Status.LINESEARCH_FAILED
    assert SearchStatus.AT_ROUNDOFF == Status.CONVERGED_ROUNDOFF


def test_the_faq_has_a_section_for_every_status():
    import pathlib
    import re

    faq = pathlib.Path(__file__).parents[1] / "docs" / "faq.md"
    sections = re.findall(r"^### `(\w+)\.(\w+)`$", faq.read_text(), re.MULTILINE)
    # Every member of both enums, and no section for a member that is gone.
    expected = [("Status", s.name) for s in Status]
    expected += [("SearchStatus", s.name) for s in SearchStatus]
    assert sorted(sections) == sorted(expected)


# ---------------------------------------------------------------------------
# Never success at a wrong point: a loss that is NaN beyond a wall (issue 16).
# f(w) = sum((w - 5)^2) where every w <= 3, NaN elsewhere, from w = 0: the
# feasible minimum is at the wall, where |grad f|_inf = 4, so no solve may
# report convergence there. float32 is where backtracking used to stop with
# CONVERGED_FTOL: its tiny steps at the wall leave the loss unchanged.

WALL = 3.0


def nan_wall(p):
    w = p["w"]
    return jnp.where(jnp.all(w <= WALL), jnp.sum((w - 5.0) ** 2), jnp.nan)


def _hand_grad_norm(w):
    return float(np.max(np.abs(2.0 * (np.asarray(w, np.float64) - 5.0))))


WALL_TX = {
    "backtracking": lambda: optax.chain(
        optax.sgd(1.0), nnxopt.linesearch.backtracking()
    ),
    "zoom": lambda: optax.chain(optax.sgd(1.0), nnxopt.linesearch.zoom()),
    "hager_zhang": lambda: optax.chain(optax.sgd(1.0), nnxopt.linesearch.hager_zhang()),
    "more_thuente": lambda: optax.chain(
        optax.sgd(1.0), nnxopt.linesearch.more_thuente()
    ),
    "lbfgs": lambda: None,
    "lbfgs+backtracking": lambda: nnxopt.lbfgs(
        linesearch=nnxopt.linesearch.backtracking()
    ),
}


def _check_wall_outcome(success, grad_norm, fun, w, values):
    gtol = nnxopt.default_tols(jnp.float32)[0]
    w = np.asarray(w)
    assert np.isfinite(w).all() and (w <= WALL).all()
    # The reported point, by hand: its loss, and success only if gtol holds.
    np.testing.assert_allclose(float(fun), float(np.sum((w - 5.0) ** 2)), rtol=1e-6)
    assert _hand_grad_norm(w) > 3.9  # at (or next to) the wall
    assert not success or _hand_grad_norm(w) <= gtol
    assert not success
    # The best finite point seen: no accepted iterate below the returned one.
    assert float(fun) <= np.nanmin(np.asarray(values))


@pytest.mark.parametrize("name", list(WALL_TX))
def test_nan_wall_is_never_reported_as_convergence_by_solve(name):
    sol = solve(nan_wall, {"w": jnp.zeros(3, jnp.float32)}, tx=WALL_TX[name]())
    values = sol.history.trim().value
    _check_wall_outcome(sol.success, sol.grad_norm, sol.fun, sol.params["w"], values)


@pytest.mark.parametrize("name", ["backtracking", "lbfgs"])
def test_nan_wall_with_a_parameter_sized_leaf(name):
    # A leaf of COND_SIZE elements: the loop keeps or moves the iterate with a
    # lax.cond instead of a select (nnxopt._tree.choose); same outcome.
    from nnxopt._tree import COND_SIZE

    def f(p):
        return nan_wall({"w": p["w"]}) + jnp.sum(p["pad"] ** 2)

    p0 = {"w": jnp.zeros(3, jnp.float32), "pad": jnp.zeros(COND_SIZE, jnp.float32)}
    sol = solve(f, p0, tx=WALL_TX[name]())
    values = sol.history.trim().value
    _check_wall_outcome(sol.success, sol.grad_norm, sol.fun, sol.params["w"], values)
    np.testing.assert_array_equal(np.asarray(sol.params["pad"]), 0.0)


class WallModel(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.zeros(3, jnp.float32))


@pytest.mark.parametrize("name", ["backtracking", "lbfgs"])
def test_nan_wall_is_never_reported_as_convergence_by_minimize(name):
    model = WallModel()
    res = nnxopt.minimize(
        lambda m: nan_wall({"w": m.w[...]}), model, tx=WALL_TX[name]()
    )
    values = res.history.trim().value
    _check_wall_outcome(res.success, res.grad_norm, res.fun, model.w[...], values)


@pytest.mark.parametrize(
    "name", ["backtracking", "zoom", "hager_zhang", "more_thuente"]
)
def test_a_search_at_a_wall_of_non_finite_values_reports_a_failure(name):
    search = getattr(nnxopt.linesearch, name)()
    w = jnp.full(3, WALL, jnp.float32)  # every step along -grad crosses the wall

    @jax.jit
    def one(w):
        def f(x):
            return nan_wall({"w": x})

        v, g = jax.value_and_grad(f)(w)
        u, s = search.update(-g, search.init(w), w, value=v, grad=g, value_fn=f)
        return u, s.status

    u, status = one(w)
    # Trials too small to move w off the wall in float32 are finite, with no
    # decrease: LINESEARCH_FAILED; without them, NON_FINITE. Never SUCCESS.
    failures = (SearchStatus.NON_FINITE, SearchStatus.LINESEARCH_FAILED)
    assert SearchStatus(int(status)) in failures
    np.testing.assert_array_equal(np.asarray(u), 0.0)  # the zero step


def test_a_loss_returning_a_dict_is_rejected_with_the_fix():
    def as_dict(p):
        return {"loss": jnp.sum(p**2)}

    with pytest.raises(TypeError, match=r"nnxopt\.solve: fun must return a real .*"
                       r"it returned dict \{'loss'.*out\['loss'\]"):  # fmt: skip
        solve(as_dict, jnp.ones(2))
    with pytest.raises(TypeError, match=r"first item of \(loss, aux\).*returned dict"):
        solve(lambda p: (as_dict(p), p), jnp.ones(2), has_aux=True)
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    opt = nnxopt.Optimizer(model, optax.sgd(0.1))
    kept = nnx.state(model, nnx.Param)
    with pytest.raises(TypeError, match=r"Optimizer\.minimize_step: loss_fn must"):
        opt.minimize_step(model, lambda m: {"loss": jnp.sum(m.kernel[...] ** 2)})
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Param), kept)


class _Boom(Exception):
    pass


def test_a_callback_that_raises_stops_the_solve_and_reaches_the_user():
    import traceback

    def weighted(w):
        return jnp.sum((w - jnp.arange(3.0)) ** 2 * jnp.asarray([1.0, 5.0, 9.0]))

    def quadratic(m):
        return weighted(m.w[...])

    def cb(info):
        if info.iteration == 2:
            raise _Boom("from the user's callback")

    model = WallModel()
    with pytest.raises(_Boom, match="from the user's callback") as caught:
        nnxopt.minimize(quadratic, model, callback=cb)
    assert "raised by the callback after iteration 2" in caught.value.__notes__[0]
    frames = [f.name for f in traceback.extract_tb(caught.value.__traceback__)]
    assert "cb" in frames  # the user's own traceback
    # The model holds the iterate the solve stopped at: a fresh 2-iteration solve.
    reference = WallModel()
    nnxopt.minimize(quadratic, reference, maxiter=2)
    np.testing.assert_array_equal(
        np.asarray(model.w[...]), np.asarray(reference.w[...])
    )
    with pytest.raises(_Boom):
        solve(weighted, jnp.zeros(3), callback=cb)


@pytest.mark.parametrize("how", ["raise", "return True"])
def test_a_callback_stop_leaves_the_last_accepted_iterate_not_the_best(how):
    # SGD with learning rate 1.5 on w**2 multiplies w by 1 - 2 * 1.5 = -2 per
    # step: every iterate is worse than the start, so the best point (the
    # start) and the last accepted iterate (-2, then 4 after iteration 2) differ.
    def cb(info):
        if info.iteration == 2:
            if how == "raise":
                raise _Boom("stop")
            return True
        return None

    model = WallModel()
    model.w[...] = jnp.ones(3, jnp.float32)
    loss = lambda m: jnp.sum(m.w[...] ** 2)  # noqa: E731
    if how == "raise":
        with pytest.raises(_Boom):
            nnxopt.minimize(loss, model, tx=optax.sgd(1.5), callback=cb)
    else:
        res = nnxopt.minimize(loss, model, tx=optax.sgd(1.5), callback=cb)
        assert res.status is Status.CALLBACK_STOP and float(res.fun) == 48.0
    np.testing.assert_array_equal(np.asarray(model.w[...]), np.full(3, 4.0))


def test_a_loss_calling_float_on_a_traced_value_is_explained():
    with pytest.raises(TypeError, match=r"nnxopt\.solve: fun turned a traced array"):
        solve(lambda p: float(jnp.sum(p**2)), jnp.ones(2))
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    kept = nnx.state(model, nnx.Param)
    with pytest.raises(TypeError, match=r"nnxopt\.minimize: loss_fn turned a traced"):
        nnxopt.minimize(lambda m: float(jnp.sum(m.kernel[...] ** 2)), model)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Param), kept)


def test_history_option_keeps_the_first_iterates_and_the_latest():
    def fun(p, target):
        return jnp.sum((p - target) ** 2) + jnp.sum(p**4)

    p0, target = jnp.zeros(3), jnp.arange(3.0)
    full = solve(fun, p0, target, maxiter=50)
    short = solve(fun, p0, target, maxiter=50, history=3)
    latest = solve(fun, p0, target, maxiter=50, history=1)
    n = int(full.nit)
    assert n > 3  # so that the short histories are full
    trimmed = full.history.trim()
    for sol in (short, latest):
        assert np.array_equal(np.asarray(sol.params), np.asarray(full.params))
        assert (int(sol.nit), int(sol.nfev)) == (n, int(full.nfev))
    assert np.asarray(short.history.value).shape == (3,)
    np.testing.assert_array_equal(short.history.value[:2], trimmed.value[:2])
    np.testing.assert_array_equal(short.history.value[2], trimmed.value[-1])
    np.testing.assert_array_equal(latest.history.nfev, trimmed.nfev[-1:])
    with pytest.raises(ValueError, match="history must be >= 1"):
        solve(fun, p0, target, history=0)
    with pytest.raises(TypeError, match="history must be None"):
        nnxopt.minimize(lambda m: 0.0, nnx.Linear(1, 1, rngs=nnx.Rngs(0)), history=2.5)
