"""``nnxopt.chunked``: value and gradient equal to the unchunked loss (up to
summation order), solves equal to unchunked solves, value-only line searches,
chunks that do not divide the data, NNX models, peak memory growing with the
chunk, and its argument errors."""

from __future__ import annotations

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nnxopt

# float64 sums of at most N = 103 terms of size O(1), in another order: each
# differs by a few ulps per term; 1e-12 is ~50x that bound (N * eps ~ 2e-14).
SUM_ORDER = 1e-12
N, D = 103, 5


def mse(w, X, y):
    return jnp.mean((jnp.tanh(X @ w) - y) ** 2)


def sse(w, X, y):
    return jnp.sum((jnp.tanh(X @ w) - y) ** 2)


@cache
def data():
    X = jnp.asarray(np.random.default_rng(0).normal(size=(N, D)))
    return X, jnp.sin(X[:, 0]) + 0.1 * X[:, 1]


@pytest.mark.parametrize(
    ("chunk_size", "loss", "reduction"),
    # not dividing N (10 chunks and a tail of 3), the whole set, more than N
    [(10, mse, "mean"), (103, sse, "sum"), (500, mse, "mean")],
)  # fmt: skip
def test_value_and_grad_equal_unchunked(chunk_size, loss, reduction):
    X, y = data()
    w = jnp.linspace(-0.3, 0.4, D)
    f = nnxopt.chunked(loss, chunk_size, reduction=reduction)
    v, g = jax.value_and_grad(f)(w, X, y)
    v0, g0 = jax.value_and_grad(loss)(w, X, y)
    scale = float(jnp.abs(v0))
    assert float(jnp.abs(v - v0)) <= SUM_ORDER * scale
    assert float(jnp.max(jnp.abs(g - g0))) <= SUM_ORDER * scale
    # a value-only call runs the forward scan alone: same value
    assert float(jnp.abs(f(w, X, y) - v0)) <= SUM_ORDER * scale


@pytest.mark.parametrize(
    "tx",
    [
        pytest.param(None, marks=pytest.mark.slow),
        nnxopt.lbfgs(linesearch=nnxopt.linesearch.backtracking()),
    ],
    ids=["more_thuente", "backtracking_value_only"],
)
def test_solve_matches_unchunked(tx):
    X, y = data()
    w0 = jnp.full((D,), 0.1)
    opts = dict(tx=tx, gtol=1e-9, ftol=0.0, maxiter=100)
    ref = nnxopt.solve(mse, w0, X, y, **opts)
    sol = nnxopt.solve(nnxopt.chunked(mse, 10), w0, X, y, **opts)  # 10 + tail 3
    assert int(ref.status) == int(sol.status) == nnxopt.Status.CONVERGED_GTOL
    # Both stop at ||g||_inf <= 1e-9 on a problem whose Hessian at the minimum
    # has its smallest eigenvalue well above 1e-3 (checked below): the two
    # minimizers agree within gtol / lambda_min ~ 1e-6, and in fact to round-off.
    lam_min = float(jnp.linalg.eigvalsh(jax.hessian(mse)(ref.params, X, y))[0])
    assert lam_min > 1e-3
    assert float(jnp.max(jnp.abs(sol.params - ref.params))) <= 1e-9 / lam_min * 10


def test_minimize_nnx_model():
    X, y = data()

    def loss(model, X, y):
        return jnp.mean((model(X)[:, 0] - y) ** 2)

    def make():
        return nnx.Linear(D, 1, param_dtype=jnp.float64, rngs=nnx.Rngs(0))

    m1 = make()
    r1 = nnxopt.minimize(nnxopt.chunked(loss, 16), m1, X, y, gtol=1e-9, ftol=0.0)
    assert r1.status == nnxopt.Status.CONVERGED_GTOL
    # linear least squares: the closed form in float64 (NumPy)
    A = np.hstack([np.asarray(X), np.ones((N, 1))])
    exact = np.linalg.lstsq(A, np.asarray(y), rcond=None)[0]
    got = np.append(np.asarray(m1.kernel[...])[:, 0], np.asarray(m1.bias[...]))
    # gtol=1e-9 and a Gram matrix X^T X / N with eigenvalues of order 1
    assert np.max(np.abs(got - exact)) <= 1e-8


@pytest.mark.slow
def test_minimize_step_matches_unchunked():
    X, y = data()

    def loss(model, X, y):
        return jnp.mean((model(X)[:, 0] - y) ** 2)

    def run(f):
        model = nnx.Linear(D, 1, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        opt = nnxopt.Optimizer(model, nnxopt.lbfgs(), wrt=nnx.Param)
        for _ in range(8):
            opt.minimize_step(model, f, X, y)
        return np.asarray(model.kernel[...])

    # 8 L-BFGS steps on a convex quadratic: the two runs differ only by the
    # order of the sums, amplified by at most the few steps' conditioning.
    np.testing.assert_allclose(run(nnxopt.chunked(loss, 16)), run(loss), atol=1e-10)


def test_peak_memory_grows_with_the_chunk():
    # A wide hidden layer: the unchunked gradient keeps N x H activations.
    n, d, h = 4096, 4, 256
    X = jnp.ones((n, d))
    y = jnp.ones((n,))
    p = {"W": jnp.ones((d, h)) * 0.01, "v": jnp.ones((h,)) * 0.01}

    def loss(p, X, y):
        return jnp.mean((jnp.tanh(X @ p["W"]) @ p["v"] - y) ** 2)

    def temp_bytes(f):
        lowered = jax.jit(jax.value_and_grad(f)).lower(p, X, y)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    full = temp_bytes(loss)
    small = temp_bytes(nnxopt.chunked(loss, 64))
    activations = n * h * 8  # one float64 N x H buffer
    assert full >= activations
    assert small <= activations / 8


def test_sum_and_extra_arguments():
    X, y = data()
    w = jnp.linspace(-0.3, 0.4, D)

    def loss(w, scale, X, y, *, shift):
        return scale * jnp.sum((X @ w + shift - y) ** 2)

    f = nnxopt.chunked(loss, 25, reduction="sum", batch_argnums=(1, 2))
    want = jax.value_and_grad(loss)(w, 2.0, X, y, shift=0.5)
    got = jax.value_and_grad(f)(w, 2.0, X, y, shift=0.5)
    np.testing.assert_allclose(got[0], want[0], rtol=SUM_ORDER)
    np.testing.assert_allclose(got[1], want[1], rtol=SUM_ORDER, atol=SUM_ORDER)


def test_errors():
    X, y = data()
    w = jnp.zeros(D)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        nnxopt.chunked(mse, 2.5)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        nnxopt.chunked(mse, 0)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        nnxopt.chunked(mse, 4, reduction="max")
    with pytest.raises(ValueError, match=r"\{'args\[0\]': 103, 'args\[1\]': 50\}"):
        nnxopt.chunked(mse, 4)(w, X, y[:50])
    with pytest.raises(ValueError, match="batch_argnums"):
        nnxopt.chunked(mse, 4, batch_argnums=(5,))(w, X, y)
    with pytest.raises(
        TypeError, match=r"loss_fn returned a tuple \{\[0\]: float64\[\]"
    ):
        nnxopt.chunked(lambda w, X, y: (mse(w, X, y), X @ w), 4)(w, X, y)
    with pytest.raises(TypeError, match="real floating scalar"):
        nnxopt.chunked(lambda w, X: X @ w, 4)(w, X)
    # optax's own value_and_grad_from_state composes with it
    assert callable(optax.value_and_grad_from_state(nnxopt.chunked(mse, 4)))


def test_forward_mode_and_other_arguments():
    # jvp, jacfwd, the Hessian (forward over reverse) and the gradient with
    # respect to the data equal the unchunked loss's up to summation order.
    X, y = data()
    w = jnp.linspace(-0.3, 0.4, D)
    t = jnp.linspace(1.0, 2.0, D)
    f = nnxopt.chunked(mse, 10)  # 10 chunks and a tail of 3
    scale = float(mse(w, X, y))
    got = jax.jvp(lambda w: f(w, X, y), (w,), (t,))
    want = jax.jvp(lambda w: mse(w, X, y), (w,), (t,))
    np.testing.assert_allclose(got, want, rtol=0, atol=SUM_ORDER * scale)
    for d in (jax.jacfwd, jax.hessian, lambda g: jax.grad(g, argnums=(1, 2))):
        got, want = d(f)(w, X, y), d(mse)(w, X, y)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=SUM_ORDER * scale)


def test_implicit_gradient_through_a_chunked_solve():
    # d w*(lam) / d lam of ridge regression, lam passed whole to every chunk
    # (mean reduction: the chunk weights sum to 1, so lam |w|^2 is counted
    # once). Closed form (NumPy, float64): w* = (A + lam I)^-1 b and
    # dw*/dlam = -(A + lam I)^-1 w*, A = X^T X / N, b = X^T y / N.
    X, y = data()

    def loss(w, X, y, *, lam):
        return jnp.mean((X @ w - y) ** 2) + lam * jnp.sum(w**2)

    f = nnxopt.chunked(loss, 25)  # 4 chunks and a tail of 3

    def total(lam):
        sol = nnxopt.solve(f, jnp.zeros(D), X, y, lam=lam, gtol=1e-11, ftol=0.0)
        return jnp.sum(sol.params)

    lam = 0.3
    A = np.asarray(X).T @ np.asarray(X) / N
    b = np.asarray(X).T @ np.asarray(y) / N
    M = A + lam * np.eye(D)
    dw = -np.linalg.solve(M, np.linalg.solve(M, b))
    # gtol=1e-11 and CG's 1e-10 relative residual on a system whose matrix has
    # eigenvalues >= lam = 0.3: the derivative is exact to ~1e-9.
    assert abs(float(jax.grad(total)(lam)) - dw.sum()) <= 1e-8
