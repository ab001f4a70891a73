"""Full-batch training with ``nnxopt.minimize``: Adam warm-up, then L-BFGS.

Run: ``python examples/minimize_regression.py`` (``--quick``: fewer steps).
"""

import sys

import jax.numpy as jnp
from flax import nnx

import nnxopt


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(1, 8, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def main(quick: bool = False) -> None:
    x = jnp.linspace(-jnp.pi, jnp.pi, 64)[:, None]
    y = jnp.sin(x)
    model = MLP(nnx.Rngs(0))
    out = nnxopt.adam_then_lbfgs(
        loss_fn,
        model,
        x,
        y,
        adam_steps=100,
        learning_rate=1e-2,
        maxiter=100 if quick else 500,
    )
    print(f"adam:   loss {float(out.adam.fun):.3e} after {out.adam.nit} iterations")
    print(
        f"L-BFGS: loss {float(out.lbfgs.fun):.3e} after {out.lbfgs.nit} iterations, "
        f"{out.lbfgs.nfev} evaluations: {out.lbfgs.message}"
    )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
