"""Bilevel: choose a ridge penalty by gradient descent on the validation loss.

The inner problem fits ridge regression with ``nnxopt.solve``; the outer one
descends ``log(lambda)`` along the hypergradient ``d val_loss(w*(lambda)) /
d lambda``, which ``jax.grad`` computes through the solution by implicit
differentiation (conjugate gradients on Hessian-vector products at ``w*``, no
unrolled loop). The result is checked against the closed form of ridge
regression, minimized over ``log(lambda)`` by scipy.

Run: ``python examples/bilevel_ridge.py`` (``--quick``: fewer outer steps).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import nnxopt

jax.config.update("jax_enable_x64", True)


def ridge(w, x, y, lam):
    """The inner objective: least squares plus ``lam |w|^2 / 2``."""
    return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_train, n_val, d = 30, 200, 20
    w_true = rng.normal(size=d) * (rng.uniform(size=d) < 0.3)
    x = rng.normal(size=(n_train + n_val, d))
    y = x @ w_true + 1.0 * rng.normal(size=n_train + n_val)
    train = (jnp.asarray(x[:n_train]), jnp.asarray(y[:n_train]))
    return train, (jnp.asarray(x[n_train:]), jnp.asarray(y[n_train:]))


def main(quick: bool = False) -> float:
    (x_tr, y_tr), (x_val, y_val) = data()
    d = x_tr.shape[1]

    def val_loss(log_lam):
        lam = jnp.exp(log_lam)
        sol = nnxopt.solve(ridge, jnp.zeros(d), x_tr, y_tr, lam, gtol=1e-10, ftol=0.0)
        return jnp.mean((x_val @ sol.params - y_val) ** 2)

    def closed_val_loss(log_lam):
        lam = np.exp(log_lam)
        a, b = np.asarray(x_tr), np.asarray(y_tr)
        w = np.linalg.solve(a.T @ a + lam * np.eye(d), a.T @ b)
        return float(np.mean((np.asarray(x_val) @ w - np.asarray(y_val)) ** 2))

    step = jax.jit(jax.value_and_grad(val_loss))
    log_lam, rate = jnp.asarray(0.0), 20.0
    for k in range(15 if quick else 40):
        value, grad = step(log_lam)
        if k % 5 == 0:
            print(
                f"step {k:3d}  lambda {float(jnp.exp(log_lam)):9.4f}  val {value:.6f}"
            )
        log_lam = log_lam - rate * grad

    # The hypergradient at the start against central differences of the closed form.
    h = 1e-5
    fd = (closed_val_loss(h) - closed_val_loss(-h)) / (2 * h)
    grad = float(step(jnp.asarray(0.0))[1])
    best = scipy.optimize.minimize_scalar(closed_val_loss, bracket=(-3.0, 3.0))
    print(
        f"hypergradient at lambda=1: {grad:.8e}  closed form (central differences) {fd:.8e}"
    )
    print(
        f"lambda by gradient descent {float(jnp.exp(log_lam)):.5f}, "
        f"closed-form optimum {np.exp(best.x):.5f}; validation loss "
        f"{closed_val_loss(float(log_lam)):.8f} vs {best.fun:.8f}"
    )
    assert abs(grad - fd) <= 1e-6 * max(1.0, abs(fd)), (grad, fd)
    gap = closed_val_loss(float(log_lam)) - best.fun
    assert gap <= (1e-3 if quick else 1e-5) * best.fun, gap
    return float(jnp.exp(log_lam))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
