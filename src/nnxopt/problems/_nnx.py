"""NNX problem factories: MLP regression, Poisson PINNs, a BatchNorm model."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._records import Array


@dataclasses.dataclass(frozen=True)
class NNXProblem:
    """A ``flax.nnx`` model, its data and a loss.

    Attributes:
        name: unique short name.
        make_model: ``make_model() -> nnx.Module``, a fresh model with the same
            initial parameters on every call (so every solver starts alike).
        loss_fn: ``loss_fn(model, *batch) -> scalar`` (may update non-``Param``
            state, e.g. BatchNorm statistics in training mode).
        batch: the data, passed as ``loss_fn(model, *batch)``.
        f_star: a known lower bound that is attained (``0.0`` for exact-solution
            PINNs in the limit), or ``None``.
        notes: what the model is.
    """

    name: str
    make_model: Callable[[], Any]
    loss_fn: Callable[..., Array]
    batch: tuple
    f_star: float | None = None
    notes: str = ""

    def num_params(self) -> int:
        """Number of ``nnx.Param`` scalars."""
        from flax import nnx

        params = nnx.state(nnx.eval_shape(self.make_model), nnx.Param)
        return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))


def _mlp_class():
    from flax import nnx

    class MLP(nnx.Module):
        """``in -> [width, tanh] * depth -> out``."""

        def __init__(self, din, width, depth, dout, *, dtype, rngs):
            sizes = [din] + [width] * depth
            self.hidden = nnx.List(
                [
                    nnx.Linear(a, b, param_dtype=dtype, dtype=dtype, rngs=rngs)
                    for a, b in itertools.pairwise(sizes)
                ]
            )
            self.out = nnx.Linear(sizes[-1], dout, param_dtype=dtype, dtype=dtype,
                                  rngs=rngs)  # fmt: skip

        def __call__(self, x):
            for layer in self.hidden:
                x = jnp.tanh(layer(x))
            return self.out(x)

    return MLP


def mlp_regression(
    width: int = 32,
    depth: int = 1,
    num_points: int = 128,
    seed: int = 0,
    dtype: Any = jnp.float32,
) -> NNXProblem:
    """Fit ``y = sin(x)`` on ``[-pi, pi]`` with a tanh MLP (mean squared error).

    ``width=32, depth=1`` has 97 parameters; ``width=220, depth=3`` about 1e5.
    """
    from flax import nnx

    mlp = _mlp_class()
    x = jnp.linspace(-math.pi, math.pi, num_points, dtype=dtype)[:, None]
    y = jnp.sin(x)

    def make_model():
        return mlp(1, width, depth, 1, dtype=dtype, rngs=nnx.Rngs(seed))

    def loss_fn(model, x, y):
        return jnp.mean((model(x) - y) ** 2)

    return NNXProblem(
        name=f"mlp_sin_w{width}d{depth}",
        make_model=make_model,
        loss_fn=loss_fn,
        batch=(x, y),
        f_star=0.0,
        notes="tanh MLP regression of sin on 128 points; f_star=0 is a lower "
        "bound (not attained exactly)",
    )


def poisson1d_residual(u: Callable[[Array], Array], x: Array) -> Array:
    """Return ``-u''(x) - pi^2 sin(pi x)`` for a scalar function ``u``, vectorised.

    The exact solution of ``-u'' = pi^2 sin(pi x)``, ``u(0) = u(1) = 0`` is
    ``u = sin(pi x)``, for which the residual vanishes.
    """
    d2u = jax.vmap(jax.grad(jax.grad(u)))(x)
    return -d2u - math.pi**2 * jnp.sin(math.pi * x)


def pinn_poisson_1d(
    width: int = 16,
    depth: int = 2,
    num_points: int = 32,
    seed: int = 0,
    dtype: Any = jnp.float32,
) -> NNXProblem:
    """1-D Poisson PINN: ``-u'' = pi^2 sin(pi x)`` on [0, 1], zero boundary.

    Loss: mean squared PDE residual at ``num_points`` interior collocation
    points (second derivative by nested ``jax.grad`` of the network) plus the
    squared boundary values. Exact solution ``sin(pi x)``.
    """
    from flax import nnx

    mlp = _mlp_class()
    xs = jnp.linspace(0.0, 1.0, num_points + 2, dtype=dtype)[1:-1]
    xb = jnp.asarray([0.0, 1.0], dtype=dtype)

    def make_model():
        return mlp(1, width, depth, 1, dtype=dtype, rngs=nnx.Rngs(seed))

    def loss_fn(model, xs, xb):
        def u(x):
            return model(x[None, None])[0, 0]

        res = poisson1d_residual(u, xs)
        ub = jax.vmap(u)(xb)
        return jnp.mean(res**2) + jnp.mean(ub**2)

    return NNXProblem(
        name=f"pinn1d_w{width}d{depth}",
        make_model=make_model,
        loss_fn=loss_fn,
        batch=(xs, xb),
        f_star=0.0,
        notes="exact solution sin(pi x) has zero loss",
    )


def poisson2d_residual(u: Callable[[Array], Array], xy: Array) -> Array:
    """Return ``-lap u - 2 pi^2 sin(pi x) sin(pi y)`` at points ``xy`` of shape (N, 2).

    Exact solution on the unit square with zero boundary: ``sin(pi x) sin(pi y)``.
    """

    def lap(p):
        return jnp.trace(jax.hessian(u)(p))

    source = (
        2.0 * math.pi**2 * jnp.sin(math.pi * xy[:, 0]) * jnp.sin(math.pi * xy[:, 1])
    )
    return -jax.vmap(lap)(xy) - source


def pinn_poisson_2d(
    width: int = 16,
    depth: int = 2,
    num_side: int = 8,
    seed: int = 0,
    dtype: Any = jnp.float32,
) -> NNXProblem:
    """2-D Poisson PINN on the unit square, exact ``u = sin(pi x) sin(pi y)``.

    Interior collocation on a ``num_side x num_side`` grid, ``4 num_side``
    boundary points; loss = mean squared residual + mean squared boundary value.
    """
    from flax import nnx

    mlp = _mlp_class()
    g = jnp.linspace(0.0, 1.0, num_side + 2, dtype=dtype)[1:-1]
    gx, gy = jnp.meshgrid(g, g)
    interior = jnp.stack([gx.ravel(), gy.ravel()], axis=1)
    s = jnp.linspace(0.0, 1.0, num_side, dtype=dtype)
    zeros, ones = jnp.zeros_like(s), jnp.ones_like(s)
    boundary = jnp.concatenate(
        [
            jnp.stack([s, zeros], 1),
            jnp.stack([s, ones], 1),
            jnp.stack([zeros, s], 1),
            jnp.stack([ones, s], 1),
        ]
    )

    def make_model():
        return mlp(2, width, depth, 1, dtype=dtype, rngs=nnx.Rngs(seed))

    def loss_fn(model, interior, boundary):
        def u(p):
            return model(p[None, :])[0, 0]

        res = poisson2d_residual(u, interior)
        return jnp.mean(res**2) + jnp.mean(model(boundary) ** 2)

    return NNXProblem(
        name=f"pinn2d_w{width}d{depth}",
        make_model=make_model,
        loss_fn=loss_fn,
        batch=(interior, boundary),
        f_star=0.0,
        notes="exact solution sin(pi x) sin(pi y) has zero loss",
    )


def batchnorm_regression(
    width: int = 32,
    num_points: int = 128,
    seed: int = 0,
    dtype: Any = jnp.float32,
) -> NNXProblem:
    """Regression with ``Linear -> BatchNorm (training mode) -> tanh -> Linear``.

    The loss normalises with the *batch* statistics and writes the running
    averages (non-``Param`` state) on every call, the case where line-search
    trial evaluations must not commit state.
    """
    from flax import nnx

    class BNNet(nnx.Module):
        def __init__(self, rngs):
            kw = dict(param_dtype=dtype, dtype=dtype, rngs=rngs)
            self.lin1 = nnx.Linear(2, width, **kw)
            self.bn = nnx.BatchNorm(width, use_running_average=False, **kw)
            self.lin2 = nnx.Linear(width, 1, **kw)

        def __call__(self, x):
            return self.lin2(jnp.tanh(self.bn(self.lin1(x))))

    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(-2.0, 2.0, (num_points, 2)), dtype=dtype)
    y = (jnp.sin(x[:, 0]) * jnp.cos(x[:, 1]))[:, None]

    def make_model():
        return BNNet(nnx.Rngs(seed))

    def loss_fn(model, x, y):
        return jnp.mean((model(x) - y) ** 2)

    return NNXProblem(
        name=f"batchnorm_w{width}",
        make_model=make_model,
        loss_fn=loss_fn,
        batch=(x, y),
        f_star=0.0,
        notes="nnx.BatchNorm in training mode; f_star=0 is a lower bound",
    )


def nnx_flat(problem: NNXProblem) -> tuple[Callable[[Array], Array], np.ndarray]:
    """Return ``(fn, x0)``: the NNX loss as a function of one flat ``Param`` vector.

    Built with ``nnx.split``/``nnx.merge`` (the non-``Param`` state is a fixed
    snapshot) and ``jax.flatten_util.ravel_pytree``; ``x0`` is float64 numpy.
    This is what the scipy reference and the flat-vector peers optimise.
    """
    from flax import nnx
    from jax.flatten_util import ravel_pytree

    graphdef, params, rest = nnx.split(problem.make_model(), nnx.Param, ...)  # type: ignore[misc]
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    flat, unravel = ravel_pytree(params)

    def fn(x):
        model = nnx.merge(graphdef, unravel(x.astype(flat.dtype)), rest)
        return problem.loss_fn(model, *problem.batch)

    return fn, np.asarray(flat, dtype=np.float64)
