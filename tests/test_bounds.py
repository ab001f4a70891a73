"""Box bounds: nnxopt.lbfgsb, solve/minimize(bounds=...), the bounded set.

References: the problems' published optima, scipy's L-BFGS-B, ``nnls`` and
``lsq_linear`` (float64, computed here), closed forms. The whole bounded set
runs through one compiled solve (``problems.stack_bounded``): its objective
records every point it is evaluated at that lies outside the box, and returns
nan there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from flax import nnx

import nnxopt
from nnxopt import problems

GTOL = 1e-5
# Known optima: the solve stops at a projected gradient of 1e-5; on these
# well-conditioned problems f is then within 1e-6 of f*, x within 1e-4 (hs3's
# x1 is scaled by 1e-5 and is checked through f only).
F_ATOL, X_ATOL = 1e-6, 1e-4
# The default suite solves a subset through one compiled solve (about 10 s of
# compilation for the whole set): a start outside the box, every bound active,
# nan outside the box, interior optimum, NNLS and bounded least squares. The
# whole set runs under -m slow (and in the `bounded` benchmark).
_DEFAULT = ("hs2", "hs5", "hs45", "hs110", "nnls", "bounded_least_squares")
_STACKS = {
    False: problems.stack_bounded(
        [p for p in problems.bounded_problems() if p.name in _DEFAULT]
    ),
    True: problems.stack_bounded(),
}
_OUTSIDE: list[tuple[int, np.ndarray]] = []


def _record(outside: np.ndarray, k: np.ndarray, x: np.ndarray) -> None:
    if bool(outside):
        _OUTSIDE.append((int(k), np.asarray(x)))


def _checker(stack: problems.BoundedStack):
    def checked(x: jax.Array, k: jax.Array, lo: jax.Array, up: jax.Array) -> jax.Array:
        outside = jnp.any(x < lo) | jnp.any(x > up)
        jax.debug.callback(_record, outside, k, x)
        return jnp.where(outside, jnp.nan, stack.fn(x, k))

    return checked


_CHECKED = {full: _checker(stack) for full, stack in _STACKS.items()}


@functools.cache
def _solutions(full: bool = False) -> tuple[nnxopt.Solution, ...]:
    stack, out = _STACKS[full], []
    for k in range(len(stack.problems)):
        x0, lo, up = (jnp.asarray(v) for v in stack.padded(k))
        sol = nnxopt.solve(
            _CHECKED[full], x0, jnp.int32(k), lo, up, bounds=(lo, up), gtol=GTOL,
            ftol=0.0,
        )  # fmt: skip
        out.append(sol)
    return tuple(out)


@functools.cache
def _scipy(full: bool, k: int) -> scipy.optimize.OptimizeResult:
    p = _STACKS[full].problems[k]
    fun = p.numpy_value_and_grad()
    x0 = np.clip(p.x0, p.lower, p.upper)
    options = dict(ftol=0.0, gtol=GTOL, maxiter=15000, maxfun=15000)
    return scipy.optimize.minimize(
        fun, x0, jac=True, method="L-BFGS-B", bounds=p.bounds, options=options
    )


_FULL = [False, pytest.param(True, marks=pytest.mark.slow, id="full")]


@pytest.mark.parametrize("full", _FULL)
def test_bounded_set_stays_in_the_box(full: bool) -> None:
    sols, stack = _solutions(full), _STACKS[full]
    assert _OUTSIDE == []  # not one evaluation outside its box, start included
    for k, sol in enumerate(sols):
        name = stack.problems[k].name
        _, lo, up = stack.padded(k)
        x = np.asarray(sol.params)
        assert np.all(x >= lo) and np.all(x <= up), name
        assert nnxopt.Status(int(sol.status)) == nnxopt.Status.CONVERGED_GTOL, name
        # gtol is on the projected gradient ||P(x - g) - x||_inf
        g = np.asarray(sol.state.grad)
        assert np.max(np.abs(np.clip(x - g, lo, up) - x)) <= GTOL, name


def _as_low_as_scipy(full: bool) -> None:
    for k, sol in enumerate(_solutions(full)):
        p, ref = _STACKS[full].problems[k], _scipy(full, k)
        assert ref.success, (p.name, ref.message)
        assert float(sol.fun) <= ref.fun + 1e-9, (p.name, float(sol.fun), ref.fun)


@pytest.mark.reference
def test_bounded_set_as_low_as_scipy() -> None:
    _as_low_as_scipy(False)


# Not `reference`: run.py's second pass selects `-m reference`, slow ones too.
@pytest.mark.slow
def test_whole_bounded_set_as_low_as_scipy() -> None:
    _as_low_as_scipy(True)


@pytest.mark.parametrize("full", _FULL)
def test_bounded_set_known_optima(full: bool) -> None:
    checked = 0
    for k, sol in enumerate(_solutions(full)):
        p = _STACKS[full].problems[k]
        if p.f_star is not None:
            assert abs(float(sol.fun) - p.f_star) <= F_ATOL, p.name
            checked += 1
        if p.x_star is not None:
            np.testing.assert_allclose(
                np.asarray(sol.params)[: p.n], p.x_star, atol=X_ATOL, err_msg=p.name
            )
    assert checked >= (8 if full else 4)


@pytest.mark.reference
def test_nnls_and_lsq_linear() -> None:
    names = [p.name for p in _STACKS[False].problems]
    sols = dict(zip(names, _solutions(), strict=True))
    a, b = problems.least_squares_data(20, 8, 4)
    x_ref, _ = scipy.optimize.nnls(a, b)
    x = np.asarray(sols["nnls"].params)[:8]
    # Both solve the same strictly convex problem (A has full column rank):
    # the minimisers agree to the solvers' tolerances.
    np.testing.assert_allclose(x, x_ref, atol=1e-6)
    a, b = problems.least_squares_data(30, 8, 5)
    ref = scipy.optimize.lsq_linear(a, b, bounds=(-0.2, 0.2), tol=1e-12)
    x = np.asarray(sols["bounded_least_squares"].params)[:8]
    np.testing.assert_allclose(x, ref.x, atol=1e-6)


def _separable(p: dict, c: dict) -> jax.Array:
    terms = jax.tree.map(lambda x, m: jnp.sum((x - m) ** 2 * (1.0 + jnp.abs(m))), p, c)
    return sum(jax.tree.leaves(terms))


def _mixed() -> tuple[dict, dict]:
    params = {"a": jnp.zeros(3), "b": {"w": jnp.zeros((2, 2))}, "c": jnp.zeros(())}
    c = {
        "a": jnp.array([-2.0, 0.5, 3.0]),
        "b": {"w": jnp.array([[1.5, -1.5], [0.2, 9.0]])},
        "c": jnp.asarray(-4.0),
    }
    return params, c


@pytest.mark.slow  # suite time: 15-20 s of compilation each
def test_per_leaf_bounds_on_a_mixed_pytree() -> None:
    params, c = _mixed()
    lower = {"a": 0.0, "b": None, "c": jnp.asarray(-1)}  # int bound: cast
    upper = {"a": jnp.array([1.0, 1.0, 2.0]), "b": {"w": 1.0}, "c": np.inf}
    sol = nnxopt.solve(_separable, params, c, bounds=(lower, upper))
    assert sol.success
    # Separable convex quadratic: the minimiser is the clip of the centre.
    want = {
        "a": jnp.clip(c["a"], 0.0, jnp.array([1.0, 1.0, 2.0])),
        "b": {"w": jnp.minimum(c["b"]["w"], 1.0)},
        "c": jnp.asarray(-1.0),
    }
    for got, ref in zip(
        jax.tree.leaves(sol.params), jax.tree.leaves(want), strict=True
    ):
        np.testing.assert_allclose(got, ref, atol=1e-6)
    assert sol.params["c"].dtype == jnp.float64


@pytest.mark.slow  # suite time: 15-20 s of compilation each
def test_infinite_bounds_take_the_unbounded_path() -> None:
    params, c = _mixed()
    free = nnxopt.solve(_separable, params, c)
    boxed = nnxopt.solve(_separable, params, c, bounds=(-np.inf, None))
    assert (int(free.nit), int(free.nfev)) == (int(boxed.nit), int(boxed.nfev))
    for a, b in zip(
        jax.tree.leaves(free.params), jax.tree.leaves(boxed.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# Bad input: clear errors at call time.


def test_lower_above_upper_names_the_leaf() -> None:
    params, c = _mixed()
    with pytest.raises(
        ValueError, match=r"nnxopt.solve: bounds lower > upper .*\['b'\]\['w'\]"
    ):
        nnxopt.solve(
            _separable, params, c, bounds=(0.0, {"a": 1.0, "b": -1.0, "c": 1.0})
        )


def test_bounds_of_another_structure_name_the_path() -> None:
    params, c = _mixed()
    with pytest.raises(ValueError, match=r"no entry for the parameter \['b'\]\['w'\]"):
        nnxopt.solve(_separable, params, c, bounds=({"a": 0.0, "c": 0.0}, None))
    with pytest.raises(ValueError, match=r"\['d'\] that matches no parameter"):
        nnxopt.solve(
            _separable,
            params,
            c,
            bounds=({"a": 0.0, "b": 0.0, "c": 0.0, "d": 1.0}, None),
        )
    with pytest.raises(ValueError, match=r"\['a'\] has shape \(2,\)"):
        nnxopt.solve(
            _separable,
            params,
            c,
            bounds=({"a": jnp.zeros(2), "b": 0.0, "c": 0.0}, None),
        )
    with pytest.raises(TypeError, match="bounds must be a pair"):
        nnxopt.solve(_separable, params, c, bounds=0.0)


def test_non_finite_start_after_projection() -> None:
    params, c = _mixed()
    params["c"] = jnp.asarray(jnp.nan)
    with pytest.raises(
        ValueError, match=r"start projected into the box is not finite at \['c'\]"
    ):
        nnxopt.solve(_separable, params, c, bounds=(0.0, 1.0))


def test_transform_that_cannot_honour_bounds() -> None:
    params, c = _mixed()
    with pytest.raises(TypeError, match=r"nnxopt.solve: bounds= needs a transform"):
        nnxopt.solve(_separable, params, c, tx=optax.adam(1e-2), bounds=(0.0, 1.0))
    with pytest.raises(TypeError, match="bounds= needs a transform"):
        nnxopt.solve(_separable, params, c, tx=nnxopt.lbfgs(), bounds=(0.0, 1.0))


# --------------------------------------------------------------------------
# NNX: minimize(bounds=...) and the step API.


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 + 0.1 * rng.standard_normal((40, 1))
    return x, y


def _mse(model: nnx.Linear, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def _linear() -> nnx.Linear:
    return nnx.Linear(3, 1, rngs=nnx.Rngs(0), param_dtype=jnp.float64)


# Kernel in [-1, 1], bias >= 0: the model's start (kernel[0] = 1.07) is outside.
_LOWER = {"kernel": -1.0, "bias": 0.0}
_UPPER = {"kernel": 1.0, "bias": None}


@functools.cache
def _minimized() -> tuple[nnx.Linear, nnxopt.MinimizeResult]:
    x, y = _data()
    model = _linear()
    lower = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    lower["kernel"] = lower["kernel"] - 1.0  # an nnx.State shaped like wrt
    result = nnxopt.minimize(_mse, model, x, y, bounds=(lower, _UPPER), gtol=1e-10)
    return model, result


@pytest.mark.reference
def test_minimize_with_bounds_on_a_model() -> None:
    x, y = _data()
    model, result = _minimized()
    assert result.success
    # Reference: lsq_linear on [x, 1] with the same bounds.
    design = np.hstack([x, np.ones((40, 1))])
    lo, up = [-1.0] * 3 + [0.0], [1.0] * 3 + [np.inf]
    ref = scipy.optimize.lsq_linear(design, y[:, 0], bounds=(lo, up), tol=1e-12)
    got = np.concatenate([np.asarray(model.kernel[...])[:, 0], model.bias[...]])
    np.testing.assert_allclose(got, ref.x, atol=1e-6)
    assert float(model.kernel[1, 0]) == -1.0  # on its bound
    # The same bounds as nested dicts: the same solve.
    other = _linear()
    nnxopt.minimize(_mse, other, x, y, bounds=(_LOWER, _UPPER), gtol=1e-10)
    np.testing.assert_array_equal(other.kernel[...], model.kernel[...])


@pytest.mark.slow  # suite time: 15-20 s of compilation each
def test_minimize_step_with_lbfgsb_follows_minimize() -> None:
    x, y = _data()
    _, result = _minimized()
    model = _linear()
    opt = nnxopt.Optimizer(model, nnxopt.lbfgsb((_LOWER, _UPPER)), wrt=nnx.Param)
    step = nnx.jit(lambda m, o: o.minimize_step(m, _mse, x, y))
    step(model, opt)  # from outside the box: a step onto it
    assert float(model.kernel[0, 0]) == 1.0
    history = np.asarray(result.history.value)
    for i in range(int(result.nit)):
        # minimize_step returns the loss before its step: the history of
        # minimize, which starts at the projected start.
        loss = step(model, opt)
        np.testing.assert_allclose(float(loss), history[i], rtol=1e-12)
    ref, _ = _minimized()
    np.testing.assert_allclose(model.kernel[...], ref.kernel[...], atol=1e-12)
    np.testing.assert_allclose(model.bias[...], ref.bias[...], atol=1e-12)


@pytest.mark.slow
def test_gp_example_of_the_guide_matches_sklearn() -> None:
    """Runs the GP block of docs/bounds.md (its assert: sklearn's log marginal
    likelihood within 1e-6 relative)."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "bounds.md").read_text()
    block = text.split("<!-- gp-example -->\n```python\n")[1].split("```")[0]
    exec(compile(block, "docs/bounds.md", "exec"), {})
