"""Fit a small NNX MLP with L-BFGS through ``nnxopt.Optimizer.minimize_step``.

Compares, on the same data, Adam (``optax.adam``) and L-BFGS (``optax.lbfgs``)
driven by the same one-line training step, and prints the loss as it goes.

    python examples/lbfgs_minimize_step.py [--quick]
"""

import sys

import jax.numpy as jnp
import optax
from flax import nnx

import nnxopt


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(1, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def main(steps: int = 200) -> dict[str, float]:
    x = jnp.linspace(-3.0, 3.0, 128)[:, None]
    y = jnp.sin(2.0 * x) * jnp.exp(-0.1 * x**2)
    final = {}
    for name, tx in [("adam", optax.adam(1e-2)), ("lbfgs", optax.lbfgs())]:
        model = MLP(nnx.Rngs(0))
        opt = nnxopt.Optimizer(model, tx, wrt=nnx.Param, graph=False)
        step = nnx.jit(lambda m, o, x, y: o.minimize_step(m, loss_fn, x, y))
        for k in range(steps + 1):
            loss = step(model, opt, x, y)
            if k % 50 == 0:
                print(f"{name:6s} step {k:4d}  loss {float(loss):.3e}")
        final[name] = float(loss_fn(model, x, y))
    print(
        f"final loss after {steps} steps: adam {final['adam']:.3e}, "
        f"lbfgs {final['lbfgs']:.3e}"
    )
    return final


if __name__ == "__main__":
    main(steps=50 if "--quick" in sys.argv[1:] else 200)
