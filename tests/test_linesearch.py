"""Tests of nnxopt.linesearch against independent references.

References: hand-written closed forms of the Moré–Thuente (1994) test
functions and their derivatives (numpy, float64) to check the acceptance
conditions at the returned step; SciPy's MINPACK-2 port (DCSRCH) for
``more_thuente``; the known minimum (1, 1) of Rosenbrock; host-side counters
for the number of evaluations.

JAX compile time dominates: every search is jitted once per dtype over all
six functions and four initial steps (``lax.switch`` over the function,
``vmap`` over the cases).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize._dcsrch import DCSRCH

from nnxopt import linesearch
from nnxopt._status import SearchStatus

jax.config.update("jax_enable_x64", True)

SEARCHES = ("zoom", "more_thuente", "hager_zhang", "backtracking")
STEPS = (1e-3, 1e-1, 10.0, 1e3)
# Constants for the conditions sweep, common to the six functions. mu=1e-3 is
# within the paper's values, eta=0.1 is the paper's value for functions 1-3.
MU, ETA = 1e-3, 0.1
# (mu, eta) -> function indices for the comparison with DCSRCH: the sweep's
# constants on all six, and the paper's stringent eta = 1e-3 on functions 4-6.
DCSRCH_CASES = {(MU, ETA): (0, 1, 2, 3, 4, 5), (1e-3, 1e-3): (3, 4, 5)}
# Under jit, XLA fuses multiply-adds, so intermediate steps may differ from
# SciPy's by an ulp; on function 6 from a = 1e3 the cubic step of dcstep
# amplifies this to ~5e-10. That case is also run without jit, where it must
# agree to 1e-12.
FUSED_ULP_CASES = {(5, 1e3): 1e-9}
XTOL = 1e-10
# float32: the returned step is within a few ulps of a step that satisfies the
# conditions; conditions are checked in float64 at the float32 step with
# these slacks (relative to |phi(0)| + 1 and |phi'(0)|).
F32_VALUE_SLACK = 1e-5
F32_SLOPE_SLACK = 1e-3
# Function 2 has phi'(0) = -5e-7 and phi'' = 21 at the minimizer: the strong
# curvature condition needs |a - a*| < 2.4e-9, below float32 resolution
# (1.9e-7 at a = 1.6). The strong-Wolfe searches must stop there with a
# decrease and STEP_TOO_SMALL; hager_zhang's approximate Wolfe conditions do not
# need this resolution.
F32_UNRESOLVABLE = {"zoom": {1}, "more_thuente": {1}}


# --------------------------------------------------------------------------
# The six test functions of Moré and Thuente (1994), section 5.


def _gam(b):
    return float(np.sqrt(1.0 + b * b) - b)


_B45 = ((1e-3, 1e-3), (1e-2, 1e-3), (1e-3, 1e-2))


def _jax_funcs():
    def f1(a):
        return -a / (a * a + 2.0)

    def f2(a):
        return (a + 0.004) ** 5 - 2.0 * (a + 0.004) ** 4

    def f3(a):
        b, el = 0.01, 39.0
        base = jnp.where(
            a <= 1 - b,
            1 - a,
            jnp.where(a >= 1 + b, a - 1, (a - 1) ** 2 / (2 * b) + b / 2),
        )
        return base + 2 * (1 - b) / (el * np.pi) * jnp.sin(el * np.pi * a / 2)

    def f456(b1, b2):
        return lambda a: (
            _gam(b1) * jnp.sqrt((1 - a) ** 2 + b2**2)
            + _gam(b2) * jnp.sqrt(a * a + b1**2)
        )

    return [f1, f2, f3] + [f456(*b) for b in _B45]


def reference(k: int, a: float) -> tuple[float, float]:
    """phi_k(a) and phi_k'(a), hand-differentiated, in float64 numpy."""
    a = float(a)
    if k == 0:
        return -a / (a * a + 2), (a * a - 2) / (a * a + 2) ** 2
    if k == 1:
        t = a + 0.004
        return t**5 - 2 * t**4, 5 * t**4 - 8 * t**3
    if k == 2:
        b, el = 0.01, 39.0
        if a <= 1 - b:
            p, dp = 1 - a, -1.0
        elif a >= 1 + b:
            p, dp = a - 1, 1.0
        else:
            p, dp = (a - 1) ** 2 / (2 * b) + b / 2, (a - 1) / b
        c = 2 * (1 - b) / (el * np.pi)
        arg = el * np.pi * a / 2
        return p + c * np.sin(arg), dp + (1 - b) * np.cos(arg)
    b1, b2 = _B45[k - 3]
    r1, r2 = np.sqrt((1 - a) ** 2 + b2**2), np.sqrt(a * a + b1**2)
    return (
        _gam(b1) * r1 + _gam(b2) * r2,
        -_gam(b1) * (1 - a) / r1 + _gam(b2) * a / r2,
    )


FUNCS = _jax_funcs()


def _make(name, mu=MU, eta=ETA, **kw):
    kw.setdefault("max_linesearch_steps", 60)
    if name == "backtracking":
        return linesearch.backtracking(slope_rtol=mu, **kw)
    kw.setdefault("stepsize_precision", XTOL)
    return getattr(linesearch, name)(slope_rtol=mu, curv_rtol=eta, **kw)


@functools.cache
def _runner(name, dtype, mu=MU, eta=ETA):
    """jit(vmap) of one search over (function index, direction scale)."""
    ls = _make(name, mu, eta)

    def one(k, scale):
        def f(x):
            return jax.lax.switch(k, FUNCS, x)

        x = jnp.zeros((), dtype)
        v, g = jax.value_and_grad(f)(x)
        # Moving from 0 along d = scale with the unit first trial is moving
        # along 1 from the initial step `scale` (test_initial_step checks it).
        return ls.update(
            jnp.asarray(scale, dtype), ls.init(x), x, value=v, grad=g, value_fn=f
        )

    return jax.jit(jax.vmap(one))


def _all_cases(name, dtype):
    ks = np.repeat(np.arange(6), len(STEPS))
    scales = np.tile(np.asarray(STEPS), 6)
    u, st = _runner(name, dtype, MU, ETA)(
        jnp.asarray(ks, jnp.int32), jnp.asarray(scales, dtype)
    )
    return ks, scales, np.asarray(u, np.float64), st


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", SEARCHES)
def test_conditions_on_more_thuente_functions(name, dtype):
    ks, scales, steps, st = _all_cases(name, dtype)
    f32 = dtype == jnp.float32
    assert st.value.dtype == dtype and st.learning_rate.dtype == dtype
    assert st.info.num_value_evals.dtype == jnp.int32
    vslack = F32_VALUE_SLACK if f32 else 0.0
    gslack = F32_SLOPE_SLACK if f32 else 0.0
    for i, (k, a) in enumerate(zip(ks, steps)):
        where = f"function {k + 1}, initial step {scales[i]:g}"
        status = SearchStatus(int(st.status[i]))
        f0, g0 = reference(k, 0.0)
        fa, ga = reference(k, a)
        tol_f = vslack * (abs(f0) + 1)
        assert a > 0 and np.isfinite(fa), where
        assert fa <= f0 + tol_f, where  # never uphill
        if f32 and k in F32_UNRESOLVABLE.get(name, ()):
            assert status == SearchStatus.STEP_TOO_SMALL, where
            continue
        assert status == SearchStatus.SUCCESS, (where, status)
        armijo = fa <= f0 + MU * a * g0 + tol_f
        if name == "backtracking":
            assert armijo, where
            # The previous trial (a / factor) failed, unless a is the first.
            if not np.isclose(a, scales[i]):
                fb, _ = reference(k, a / 0.5)
                assert not fb <= f0 + MU * (a / 0.5) * g0 - tol_f, where
        elif name == "hager_zhang":
            wolfe = armijo and ga >= ETA * g0 - gslack * abs(g0)
            approx = (2 * MU - 1) * g0 + gslack * abs(
                g0
            ) >= ga >= ETA * g0 - gslack * abs(g0) and fa <= f0 + 1e-6 * abs(f0) + tol_f
            assert wolfe or approx, where
        else:
            assert armijo, where
            assert abs(ga) <= ETA * abs(g0) * (1 + gslack) + gslack * abs(g0), where
        # info agrees with the reference evaluation.
        np.testing.assert_allclose(
            float(st.value[i]), fa, rtol=1e-5 if f32 else 1e-12, atol=1e-7 if f32 else 0
        )


@functools.cache
def _value_and_grad(k):
    return jax.jit(jax.value_and_grad(FUNCS[k]))


def _dcsrch(k, s, mu, eta, jit=True):
    """SciPy's DCSRCH on phi(alpha) = f_k(alpha * s) (unit first step)."""
    calls = []
    vg = _value_and_grad(k) if jit else jax.value_and_grad(FUNCS[k])

    def phi(alpha):
        calls.append(alpha)
        return float(vg(jnp.asarray(alpha * s))[0])

    def dphi(alpha):
        # phi'(alpha) = f'(x) * d, rounded as the transform computes it.
        return float(vg(jnp.asarray(alpha * s))[1] * s)

    f0, g0 = vg(jnp.zeros(()))
    search = DCSRCH(phi, dphi, mu, eta, XTOL, 0.0, np.inf)
    stp, _, _, task = search(1.0, phi0=float(f0), derphi0=float(g0 * s), maxiter=100)
    assert task.startswith(b"CONV"), task
    return stp * s, len(calls)


@pytest.mark.parametrize("rtols", list(DCSRCH_CASES), ids=["sweep", "paper_4_6"])
def test_more_thuente_matches_scipy_dcsrch(rtols):
    mu, eta = rtols
    run = _runner("more_thuente", jnp.float64, mu, eta)
    ks = np.repeat(np.asarray(DCSRCH_CASES[rtols]), len(STEPS))
    scales = np.tile(np.asarray(STEPS), len(DCSRCH_CASES[rtols]))
    u, st = run(jnp.asarray(ks, jnp.int32), jnp.asarray(scales))
    for i, (k, s) in enumerate(zip(ks, scales)):
        step, nfev = _dcsrch(k, s, mu, eta)
        where = f"function {k + 1}, initial step {s:g}"
        rtol = FUSED_ULP_CASES.get((k, s), 1e-10)
        np.testing.assert_allclose(float(u[i]), step, rtol=rtol, err_msg=where)
        assert int(st.info.num_value_evals[i]) == nfev, where
        assert int(st.status[i]) == SearchStatus.SUCCESS, where
        if (k, s) in FUSED_ULP_CASES and eta == 1e-3:
            ls = _make("more_thuente", mu, eta)
            x = jnp.zeros(())
            v, g = jax.value_and_grad(FUNCS[k])(x)
            with jax.disable_jit():
                u1, st1 = ls.update(
                    jnp.asarray(s), ls.init(x), x, value=v, grad=g, value_fn=FUNCS[k]
                )
            step1, nfev1 = _dcsrch(k, s, mu, eta, jit=False)
            np.testing.assert_allclose(float(u1), step1, rtol=1e-12, err_msg=where)
            assert int(st1.info.num_value_evals) == nfev1 == nfev


@pytest.mark.parametrize("name", SEARCHES)
def test_initial_step_option_and_evaluation_count(name):
    calls = []

    def f(x):
        jax.debug.callback(lambda: calls.append(1))
        return FUNCS[0](x)

    x = jnp.zeros(())
    v, g = jax.value_and_grad(FUNCS[0])(x)
    ls = _make(name, initial_step=10.0)
    u, st = jax.jit(
        lambda: ls.update(jnp.ones(()), ls.init(x), x, value=v, grad=g, value_fn=f)
    )()
    jax.effects_barrier()
    k = STEPS.index(10.0)
    _, _, steps, ref = _all_cases(name, jnp.float64)
    np.testing.assert_allclose(float(u), steps[k], rtol=1e-12)
    info = st.info
    assert int(info.num_value_evals) == int(ref.info.num_value_evals[k])
    # Every forward pass is a value evaluation, with or without a gradient.
    assert len(calls) == int(info.num_value_evals)
    if name == "backtracking":
        assert int(info.num_grad_evals) == 1
    else:
        assert int(info.num_grad_evals) == int(info.num_value_evals)


def _sq(w):
    return jnp.sum(w * w)


@pytest.mark.parametrize("name", SEARCHES)
def test_not_descent_direction_falls_back(name):
    w = jnp.asarray([60.0, 0.0])
    ls = _make(name)
    v, g = jax.value_and_grad(_sq)(w)
    d = jnp.asarray([1.0, 0.0])
    u, st = jax.jit(
        lambda: ls.update(d, ls.init(w), w, value=v, grad=g, value_fn=_sq)
    )()
    assert int(st.status) == SearchStatus.NOT_DESCENT
    w1 = w + u
    assert float(_sq(w1)) < float(v)
    assert float(u[0]) < 0  # moved along -grad, not along the given direction
    np.testing.assert_allclose(float(st.value), float(_sq(w1)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(st.grad), 2 * np.asarray(w1), rtol=1e-12)
    # optax.value_and_grad_from_state reuses what the search stored (the
    # function given here would return nan); after init it must evaluate.
    v2, g2 = optax.value_and_grad_from_state(lambda y: jnp.nan * _sq(y))(w1, state=st)
    assert float(v2) == float(st.value) and np.array_equal(g2, st.grad)
    assert optax.tree.get(ls.init(w), "value") == jnp.inf
    v3, _ = optax.value_and_grad_from_state(_sq)(w, state=ls.init(w))
    assert float(v3) == float(v)


@functools.cache
def _non_finite_runner(name):
    ls = _make(name, max_linesearch_steps=20)
    x = jnp.zeros(())

    @jax.jit
    def run(threshold, direction, bad):
        def f(x):
            return jnp.where(x > threshold, bad, (x - 2.0) ** 2)

        v, g = jax.value_and_grad(f)(x)
        return ls.update(direction, ls.init(x), x, value=v, grad=g, value_fn=f)

    return run


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name", SEARCHES)
def test_non_finite_trials(name, bad):
    run = functools.partial(_non_finite_runner(name), bad=jnp.asarray(bad))

    # The unit step (x = 8) is non-finite; finite points below 1.5 decrease f.
    u, st = run(1.5, jnp.asarray(8.0))
    assert np.isfinite(float(u)) and 0 < float(u) <= 1.5
    assert float(st.value) < 4.0 and np.isfinite(float(st.grad))
    assert int(st.status) in (
        SearchStatus.SUCCESS,
        SearchStatus.MAX_LINESEARCH_STEPS,
        SearchStatus.STEP_TOO_SMALL,
    )
    # Nothing finite along the direction: zero step, start value and gradient.
    u, st = run(0.0, jnp.asarray(8.0))
    assert float(u) == 0.0 and float(st.learning_rate) == 0.0
    assert float(st.value) == 4.0 and float(st.grad) == -4.0
    assert int(st.status) == SearchStatus.NON_FINITE


def _rosenbrock(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


@pytest.mark.parametrize("name", SEARCHES)
def test_lbfgs_rosenbrock_drop_in(name):
    """optax.lbfgs(linesearch=...) in a lax.while_loop, with has_aux."""
    ls = _make(name, has_aux=True, max_linesearch_steps=30)
    if name != "backtracking":
        ls = getattr(linesearch, name)(has_aux=True)
    opt = optax.lbfgs(linesearch=ls)
    x0 = jnp.asarray([-1.2, 1.0])

    def f_aux(x):
        return _rosenbrock(x), {"x": x}

    @jax.jit
    def solve(x0):
        state = opt.init(x0)
        # A fixed carry structure: the aux field set before the loop.
        state = optax.tree.set(state, aux={"x": jnp.zeros_like(x0)})
        vg = optax.value_and_grad_from_state(_rosenbrock)

        def body(c):
            x, state, i, aux_err, evals = c
            v, g = vg(x, state=state)
            u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f_aux)
            x = optax.apply_updates(x, u)
            aux = optax.tree.get(state, "aux")
            aux_err = jnp.maximum(aux_err, jnp.max(jnp.abs(aux["x"] - x)))
            return (
                x,
                state,
                i + 1,
                aux_err,
                evals + optax.tree.get(state, "num_value_evals"),
            )

        def cond(c):
            _, state, i, _, _ = c
            g = optax.tree.get(state, "grad")
            return (i < 200) & ((i == 0) | (optax.tree.norm(g) > 1e-9))

        return jax.lax.while_loop(cond, body, (x0, state, 0, jnp.zeros(()), 0))

    x, state, nit, aux_err, evals = solve(x0)
    np.testing.assert_allclose(np.asarray(x), [1.0, 1.0], atol=1e-6)
    assert float(aux_err) == 0.0  # the aux is the accepted point's
    assert int(nit) < 100 and int(evals) < 400
    np.testing.assert_allclose(
        float(optax.tree.get(state, "value")), float(_rosenbrock(x)), atol=1e-15
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(slope_rtol=2.0), ValueError, r"slope_rtol.*2\.0"),
        (dict(slope_rtol=0.4, curv_rtol=0.1), ValueError, "must not exceed"),
        (dict(max_linesearch_steps=2.5), TypeError, r"max_linesearch_steps.*2\.5"),
        (dict(max_linesearch_steps=0), ValueError, r"max_linesearch_steps.*>= 1"),
        (dict(max_learning_rate=-1.0), ValueError, r"max_learning_rate.*-1\.0"),
        (dict(has_aux=1), TypeError, "has_aux"),
    ],
)
@pytest.mark.parametrize("name", ["zoom", "more_thuente", "hager_zhang"])
def test_argument_checks(name, kwargs, error, match):
    with pytest.raises(error, match=f"nnxopt.linesearch.{name}.*{match}"):
        getattr(linesearch, name)(**kwargs)


def test_argument_checks_backtracking_and_missing_value_fn():
    with pytest.raises(ValueError, match=r"backtracking.*decrease_factor.*1\.5"):
        linesearch.backtracking(decrease_factor=1.5)
    ls = linesearch.backtracking()
    x = jnp.ones(2)
    with pytest.raises(TypeError, match="'value_fn'"):
        ls.update(x, ls.init(x), x, value=1.0, grad=x)
