"""Logistic regression with ``nnxopt.solve``, checked against scikit-learn.

L2-regularised logistic regression on scikit-learn's breast-cancer data (569
samples, 30 standardised features, shipped with scikit-learn: no download),
fitted by ``nnxopt.solve`` on a dict of parameters in float64 and by
``sklearn.linear_model.LogisticRegression`` (``lbfgs``) on the same objective:
scikit-learn minimizes ``C * sum(log-loss) + |w|^2 / 2`` with the intercept
unpenalised; dividing by ``C n`` gives the mean log-loss plus
``|w|^2 / (2 C n)``, the same minimizer. Both solvers converge tightly, so
their coefficients agree to about 1e-6.

Run: ``python examples/logistic_regression_sklearn.py`` (needs scikit-learn).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import nnxopt

jax.config.update("jax_enable_x64", True)
C = 1.0


def loss(params, x, y):
    logits = x @ params["w"] + params["b"]
    # log(1 + exp(z)) - y z, the log-loss of labels y in {0, 1}, stably.
    log_loss = jnp.mean(jnp.logaddexp(0.0, logits) - y * logits)
    return log_loss + jnp.sum(params["w"] ** 2) / (2.0 * C * x.shape[0])


def main(quick: bool = False) -> dict[str, float]:
    del quick  # already small: 569 x 30
    x_np, y_np = load_breast_cancer(return_X_y=True)
    x_np = StandardScaler().fit_transform(x_np)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np, dtype=jnp.float64)

    start = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
    sol = nnxopt.solve(loss, start, x, y, gtol=1e-9, ftol=1e-15, maxiter=1000)

    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x_np, y_np)
    coef = np.append(np.asarray(sol.params["w"]), float(sol.params["b"]))
    ref_coef = np.append(ref.coef_[0], ref.intercept_[0])
    diff = float(np.max(np.abs(coef - ref_coef)) / np.max(np.abs(ref_coef)))
    accuracy = float(np.mean((x_np @ coef[:-1] + coef[-1] > 0) == y_np))

    print(f"nnxopt.solve: {sol.message} after {int(sol.nit)} iterations, "
          f"{int(sol.nfev)} evaluations")  # fmt: skip
    print(f"objective: nnxopt {float(sol.fun):.10f}")
    ref_params = {"w": jnp.asarray(ref.coef_[0]), "b": jnp.asarray(ref.intercept_[0])}
    print(f"           sklearn {float(loss(ref_params, x, y)):.10f}")
    print(f"largest coefficient difference / largest coefficient: {diff:.1e}")
    print(f"training accuracy: {accuracy:.3f}")
    return {
        "diff": diff,
        "fun": float(sol.fun),
        "ref_fun": float(loss(ref_params, x, y)),
    }


if __name__ == "__main__":
    result = main(quick="--quick" in sys.argv[1:])
    # Both minimize one strictly convex objective to tight tolerances: the
    # minimizers agree to ~1e-6 relative (measured 8.5e-7), the objective to
    # ~1e-12; 1e-4 leaves room for other CPUs and library versions.
    assert result["diff"] < 1e-4, result
    assert result["fun"] <= result["ref_fun"] + 1e-9, result
