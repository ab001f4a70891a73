"""Full-batch training with ``nnxopt.minimize``: Adam warm-up, then L-BFGS.

Run: ``python examples/minimize_regression.py``.
"""

import jax.numpy as jnp
import optax
from flax import nnx

from nnxopt._minimize import minimize


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(1, 8, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def main() -> None:
    x = jnp.linspace(-jnp.pi, jnp.pi, 64)[:, None]
    y = jnp.sin(x)
    model = MLP(nnx.Rngs(0))
    warm = minimize(loss_fn, model, x, y, tx=optax.adam(1e-2), maxiter=100)
    final = minimize(loss_fn, model, x, y, maxiter=500)  # default L-BFGS
    print(f"adam:   loss {float(warm.fun):.3e} after {warm.nit} iterations")
    print(
        f"L-BFGS: loss {float(final.fun):.3e} after {final.nit} iterations, "
        f"{final.nfev} evaluations: {final.message}"
    )
    assert float(final.fun) < float(warm.fun)


if __name__ == "__main__":
    main()
