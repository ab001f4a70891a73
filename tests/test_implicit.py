"""Implicit differentiation of ``nnxopt.solve``'s solution.

References: the closed form of ridge regression's solution and its derivative;
central finite differences of re-solves (logistic regression); the duality of
forward and reverse mode (``<u, J t> = <J^T u, t>``).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxopt
from nnxopt import solve

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(40, 5)))
Y = jnp.asarray(X @ RNG.normal(size=5) + 0.3 * RNG.normal(size=40))
LABELS = jnp.asarray((RNG.uniform(size=40) < jax.nn.sigmoid(X[:, 0])).astype(float))
#: Solve far below the default gtol: the derivative is evaluated at the
#: returned point, so its error is that of the point (|dx| <= gtol / lambda_min).
TIGHT = dict(gtol=1e-11, ftol=0.0)


def ridge(w, x, y, lam):
    return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def ridge_closed(x, y, lam):
    return jnp.linalg.solve(x.T @ x + lam * jnp.eye(x.shape[1]), x.T @ y)


def w_ridge(lam):
    return solve(ridge, jnp.zeros(5), X, Y, lam, **TIGHT).params


def test_ridge_derivative_matches_closed_form():
    """Reverse mode under jit and vmap (forward mode: the has_aux test below)."""
    lams = jnp.asarray([0.1, 1.0, 30.0])
    # d w*/d lambda = -(X^T X + lambda I)^{-1} w*
    want = np.stack([-np.asarray(ridge_closed(X, Y, lam_)) for lam_ in lams])
    want = np.stack(
        [
            np.linalg.solve(np.asarray(X.T @ X) + lam_ * np.eye(5), w)
            for lam_, w in zip(np.asarray(lams), want, strict=True)
        ]
    )
    reverse = jax.jit(jax.vmap(jax.jacrev(w_ridge)))(lams)
    np.testing.assert_allclose(reverse, want, rtol=0, atol=1e-8)


def test_a_leaf_whose_gradient_ignores_the_hyperparameter():
    """An unpenalised bias: its gradient does not depend on lambda, so its
    part of the right-hand side is a constant zero (reverse mode failed on it
    inside JAX's custom_linear_solve transpose)."""

    def loss(p, x, y, lam):
        r = x @ p["w"] + p["b"] - y
        return 0.5 * jnp.sum(r**2) + 0.5 * lam * jnp.sum(p["w"] ** 2)

    def total(lam):
        p0 = {"w": jnp.zeros(5), "b": jnp.zeros(())}
        p = solve(loss, p0, X, Y, lam, **TIGHT).params
        return jnp.sum(p["w"]) + p["b"]

    lam = 0.7
    # Closed form: centre the data; w* = (Xc'Xc + lam I)^{-1} Xc'Yc and
    # b* = mean(y) - mean(x)·w*, so dw/dlam = -(Xc'Xc + lam I)^{-1} w* and
    # db/dlam = -mean(x)·dw/dlam.
    xc = np.asarray(X) - np.asarray(X).mean(0)
    yc = np.asarray(Y) - np.asarray(Y).mean()
    a = xc.T @ xc + lam * np.eye(5)
    dw = -np.linalg.solve(a, np.linalg.solve(a, xc.T @ yc))
    want = dw.sum() - np.asarray(X).mean(0) @ dw
    np.testing.assert_allclose(jax.grad(total)(jnp.asarray(lam)), want, atol=1e-8)


def test_nnx_recipe_split_solve_merge_matches_closed_form():
    """The guide's recipe for NNX models (docs/batched_and_implicit.md)."""
    from flax import nnx

    model = nnx.Linear(5, 1, use_bias=False, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x_val, y_val = X[:10] + 0.5, Y[:10, None] - 0.2
    lam = jnp.asarray(0.7)

    def inner(p, x, y, lam):
        m = nnx.merge(graphdef, p, rest)
        l2 = sum(jnp.sum(w**2) for w in jax.tree.leaves(p))
        return 0.5 * jnp.sum((m(x) - y) ** 2) + 0.5 * lam * l2

    def outer(lam):
        sol = nnxopt.solve(inner, params, X, Y[:, None], lam, **TIGHT)
        trained = nnx.merge(graphdef, sol.params, rest)
        return jnp.mean((trained(x_val) - y_val) ** 2)

    # closed form: w*(lam) (ridge), d w*/d lam = -(X^T X + lam I)^{-1} w*
    w = np.asarray(ridge_closed(X, Y, lam))
    dw = -np.linalg.solve(np.asarray(X.T @ X) + float(lam) * np.eye(5), w)
    grad_w = 2 * np.asarray(x_val).T @ (np.asarray(x_val) @ w - np.asarray(y_val[:, 0]))
    want = grad_w @ dw / len(y_val)
    # both sides to round-off of a solve at gtol 1e-11 (|dw| <= gtol/lambda_min)
    np.testing.assert_allclose(jax.grad(outer)(lam), want, rtol=1e-7)
    assert abs(want) > 1e-3  # a derivative worth testing


def logistic(w, x, labels, c):
    z = x @ w
    return c * jnp.sum(jnp.logaddexp(0.0, z) - labels * z) + 0.5 * jnp.sum(w**2)


def w_logistic(c, x=X):
    # c as an array: a Python float is a static argument (one compile per value)
    return solve(logistic, jnp.zeros(5), x, LABELS, jnp.asarray(c), **TIGHT).params


@pytest.mark.slow  # suite time: its own compilations
def test_logistic_derivative_matches_finite_differences_of_resolves():
    c, h = 0.5, 1e-4
    grad = jax.jit(jax.jacrev(w_logistic))(c)
    fd = (np.asarray(w_logistic(c + h)) - np.asarray(w_logistic(c - h))) / (2 * h)
    # central differences: error O(h^2 w''') ~ 1e-8, and the re-solves' own
    # error (gtol / lambda_min / h ~ 1e-7 at most)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(fd)) > 1e-2  # a derivative worth testing


def test_jvp_and_vjp_agree():
    """With respect to the data matrix: <u, J t> (forward) = <J^T u, t> (reverse)."""
    t = jnp.asarray(RNG.normal(size=X.shape))
    u = jnp.asarray(RNG.normal(size=5))
    w, jt = jax.jvp(lambda x: w_logistic(0.5, x), (X,), (t,))
    w2, pullback = jax.vjp(lambda x: w_logistic(0.5, x), X)
    (jtu,) = pullback(u)
    np.testing.assert_allclose(w, w2, rtol=1e-12)
    np.testing.assert_allclose(jnp.vdot(u, jt), jnp.vdot(jtu, t), rtol=1e-10)


def ridge_aux(w, x, y, lam):
    residual = x @ w - y
    return ridge(w, x, y, lam), {"residual": residual, "count": jnp.int32(7)}


@pytest.mark.slow  # suite time: its own compilations
def test_has_aux_and_fun_differentiate():
    lam = jnp.asarray(2.0)

    def outputs(lam):
        sol = solve(ridge_aux, jnp.zeros(5), X, Y, lam, has_aux=True, **TIGHT)
        return sol.aux["residual"], sol.fun

    def closed(lam):
        w = ridge_closed(X, Y, lam)
        return X @ w - Y, ridge(w, X, Y, lam)

    (r, f), (dr, df) = jax.jvp(outputs, (lam,), (1.0,))
    (r_c, f_c), (dr_c, df_c) = jax.jvp(closed, (lam,), (1.0,))
    np.testing.assert_allclose(r, r_c, atol=1e-9)
    np.testing.assert_allclose(f, f_c, rtol=1e-12)
    np.testing.assert_allclose(dr, dr_c, atol=1e-8)
    # envelope theorem: d f(w*(lam), lam) / d lam = |w*|^2 / 2
    np.testing.assert_allclose(df, df_c, rtol=1e-8)


def test_start_has_zero_derivative():
    lam = jnp.asarray(1.0)
    grad = jax.grad(lambda w0: jnp.sum(solve(ridge, w0, X, Y, lam).params))(jnp.ones(5))
    np.testing.assert_array_equal(grad, np.zeros(5))


def test_non_float_argument_is_a_clear_error():
    def first(k):
        return solve(ridge, jnp.zeros(5), X, Y, k).params[0]

    with pytest.raises(TypeError, match="real- or complex-valued inputs"):
        jax.grad(first)(3)


@pytest.mark.slow  # suite time: its own compilations
def test_cg_short_of_tolerance_is_reported():
    def first(lam):
        options = nnxopt.ImplicitDiff(maxiter=1)
        return solve(ridge, jnp.zeros(5), X, Y, lam, implicit=options).params[0]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jax.grad(first)(jnp.asarray(1.0))
    messages = [
        str(w.message) for w in caught if w.category is nnxopt.ImplicitDiffWarning
    ]
    assert messages and "maxiter=1" in messages[0], messages
    with pytest.raises(ValueError, match=r"ImplicitDiff\(tol=\.\.\.\)"):
        solve(ridge, jnp.zeros(5), X, Y, 1.0, implicit=nnxopt.ImplicitDiff(tol=-1.0))


def test_bounded_solve_is_not_silently_differentiated():
    # At an active bound the solution is piecewise in the arguments: until the
    # free-variable rule exists, jax.grad must say so rather than return zeros
    # (the loop runs on detached values).
    def w_bounded(lam):
        return solve(ridge, jnp.zeros(5), X, Y, lam, bounds=(0.0, 1.0)).params

    with pytest.raises(NotImplementedError, match="bounds= is not supported"):
        jax.grad(lambda lam: jnp.sum(w_bounded(lam)))(1.0)
