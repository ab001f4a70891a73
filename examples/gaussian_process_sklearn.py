"""Fit a Gaussian process's hyperparameters with ``nnxopt.solve``, against scikit-learn.

A GP with kernel ``c * exp(-|x - x'|^2 / (2 l^2)) + s * delta(x, x')`` on 30
noisy samples of ``sin``; the log amplitude, length scale and noise level are
found by minimizing the negative log marginal likelihood (a Cholesky solve)
with ``nnxopt.solve`` in float64, from the start scikit-learn's
``GaussianProcessRegressor`` uses for ``ConstantKernel() * RBF() +
WhiteKernel(0.1)``, whose own L-BFGS-B fit is the reference. scikit-learn's
``log_marginal_likelihood`` checks the objective at nnxopt's solution; the
plot (``gp_fit.png``) shows the data, the posterior mean and two standard
deviations.

Run: ``python examples/gaussian_process_sklearn.py`` (needs scikit-learn;
``--quick``: no plot).
"""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

import nnxopt

jax.config.update("jax_enable_x64", True)


def kernel(theta, a, b):
    """The covariance between points ``a`` (n,) and ``b`` (m,); theta in logs."""
    amplitude, length = jnp.exp(theta["log_amplitude"]), jnp.exp(theta["log_length"])
    return amplitude * jnp.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / length**2)


def neg_log_marginal_likelihood(theta, x, y):
    cov = kernel(theta, x, x) + jnp.exp(theta["log_noise"]) * jnp.eye(x.shape[0])
    chol = jnp.linalg.cholesky(cov)
    alpha = jax.scipy.linalg.cho_solve((chol, True), y)
    return (
        0.5 * y @ alpha
        + jnp.sum(jnp.log(jnp.diag(chol)))
        + 0.5 * x.shape[0] * math.log(2 * math.pi)
    )


def posterior(theta, x, y, x_new):
    cov = kernel(theta, x, x) + jnp.exp(theta["log_noise"]) * jnp.eye(x.shape[0])
    cross = kernel(theta, x_new, x)
    mean = cross @ jnp.linalg.solve(cov, y)
    var = jnp.exp(theta["log_amplitude"]) - jnp.sum(
        cross * jnp.linalg.solve(cov, cross.T).T, axis=1
    )
    return mean, jnp.sqrt(jnp.maximum(var, 0.0))


def plot(theta, x, y, path="gp_fit.png"):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot extra is not installed
        return
    grid = jnp.linspace(0.0, 6.0, 200)
    mean, std = posterior(theta, jnp.asarray(x), jnp.asarray(y), grid)
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.fill_between(grid, mean - 2 * std, mean + 2 * std, alpha=0.3, label="±2 sd")
    ax.plot(grid, mean, label="posterior mean")
    ax.plot(x, y, "k.", label="data")
    ax.set(title="GP fitted by nnxopt.solve", xlabel="x", ylabel="y")
    ax.legend(loc="lower left")
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def main(quick: bool = False) -> dict[str, float]:
    # Already small (30 points, 3 hyperparameters): --quick only skips the plot.
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0.0, 6.0, 30))
    y = np.sin(x) + 0.1 * rng.standard_normal(30)

    start = {"log_amplitude": 0.0, "log_length": 0.0, "log_noise": math.log(0.1)}
    start = {k: jnp.asarray(v) for k, v in start.items()}
    sol = nnxopt.solve(
        neg_log_marginal_likelihood, start, jnp.asarray(x), jnp.asarray(y), gtol=1e-8
    )
    theta = np.array([float(sol.params[k]) for k in start])

    sk_kernel = ConstantKernel(1.0) * RBF(1.0) + WhiteKernel(0.1)
    ref = GaussianProcessRegressor(sk_kernel, optimizer="fmin_l_bfgs_b").fit(
        x[:, None], y
    )
    ours_by_sklearn = ref.log_marginal_likelihood(theta)

    print(f"nnxopt.solve: {sol.message}")
    print(f"after {int(sol.nit)} iterations, {int(sol.nfev)} evaluations")
    names = ("amplitude", "length scale", "noise")
    for name, mine, theirs in zip(names, np.exp(theta), np.exp(ref.kernel_.theta)):
        print(f"{name:>12}: nnxopt {mine:.5f}  sklearn {theirs:.5f}")
    print(
        f"log marginal likelihood: nnxopt {-float(sol.fun):.6f} "
        f"(by sklearn at nnxopt's solution: {ours_by_sklearn:.6f})"
    )
    print(f"                         sklearn {ref.log_marginal_likelihood_value_:.6f}")  # fmt: skip
    if not quick:
        plot(sol.params, x, y)
    return {
        "fun": float(sol.fun),
        "fun_by_sklearn": -float(ours_by_sklearn),
        "ref_fun": -float(ref.log_marginal_likelihood_value_),
        "theta_diff": float(np.max(np.abs(theta - ref.kernel_.theta))),
    }


if __name__ == "__main__":
    result = main(quick="--quick" in sys.argv[1:])
    # sklearn computes the same objective at our hyperparameters (round-off).
    assert abs(result["fun"] - result["fun_by_sklearn"]) < 1e-8, result
    # Both converge to the same optimum from the same start; L-BFGS-B's default
    # tolerances (pgtol 1e-5) leave sklearn's a little short of it.
    assert result["fun"] <= result["ref_fun"] + 1e-6, result
    assert result["theta_diff"] < 1e-2, result
