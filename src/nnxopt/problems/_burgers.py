"""1-D viscous Burgers PINN and its reference solution (Cole–Hopf)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._nnx import NNXProblem, _mlp_class
from ._records import Array

#: The viscosity of the classic benchmark (Raissi, Perdikaris and Karniadakis
#: 2019): ``0.01 / pi``; a shock forms at ``x = 0`` by ``t ~ 0.4``.
BURGERS_NU = 0.01 / math.pi


def burgers_residual(u: Callable[[Array], Array], xt: Array, nu: float) -> Array:
    """Return ``u_t + u u_x - nu u_xx`` at points ``xt`` of shape ``(N, 2)``.

    ``u(p)`` is a scalar function of one point ``p = (x, t)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnxopt.problems import burgers_residual
        >>> xt = jnp.asarray([[0.3, 0.2]])
        >>> # u = x / (t + 1) solves Burgers' equation: zero up to round-off
        >>> r = burgers_residual(lambda p: p[0] / (p[1] + 1.0), xt, 0.1)
        >>> bool(abs(r[0]) < 1e-12)
        True
    """

    def one(p: Array) -> Array:
        du = jax.grad(u)(p)
        d2u = jax.hessian(u)(p)
        return du[1] + u(p) * du[0] - nu * d2u[0, 0]

    return jax.vmap(one)(xt)


def burgers_solution(
    x: np.ndarray, t: np.ndarray, nu: float = BURGERS_NU, num_nodes: int = 4001
) -> np.ndarray:
    """Return the exact solution of Burgers' equation with ``u(x, 0) = -sin(pi x)``.

    By the Cole–Hopf transform (Basdevant et al. 1986, eq. 3),

    .. math::
        u(x, t) = -\\frac{\\int \\sin(\\pi(x - \\eta)) f(x - \\eta)
        e^{-\\eta^2 / 4 \\nu t} d\\eta}{\\int f(x - \\eta) e^{-\\eta^2 / 4\\nu t}
        d\\eta}, \\qquad f(y) = e^{-\\cos(\\pi y) / 2 \\pi \\nu},

    computed in float64 NumPy with ``eta = sqrt(4 nu t) z`` and the trapezoidal
    rule on ``num_nodes`` points of ``z`` in ``[-10, 10]`` (spectrally accurate
    for this smooth, rapidly decaying integrand), in log-sum-exp form (``f``
    reaches ``e^{50}`` for the default ``nu``). The boundary values
    ``u(+-1, t) = 0`` hold by symmetry.

    Args:
        x: positions in ``[-1, 1]`` (any shape, broadcast with ``t``).
        t: times ``>= 0``.
        nu: the viscosity.
        num_nodes: quadrature points.

    Returns:
        ``u`` with the broadcast shape of ``x`` and ``t``, float64.

    Example:
        >>> from nnxopt.problems import burgers_solution
        >>> float(burgers_solution(0.5, 0.0)), abs(float(burgers_solution(1.0, 0.5))) < 1e-12
        (-1.0, True)

    References:
        C. Basdevant et al., "Spectral and finite difference solutions of the
        Burgers equation", Computers & Fluids 14(1):23-41, 1986.
    """
    x, t = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(t, np.float64))
    z = np.linspace(-10.0, 10.0, num_nodes)
    s = np.sqrt(4.0 * nu * t)[..., None]
    y = x[..., None] - s * z
    log_w = -np.cos(math.pi * y) / (2.0 * math.pi * nu) - z**2
    w = np.exp(log_w - log_w.max(axis=-1, keepdims=True))
    u = -np.sum(np.sin(math.pi * y) * w, axis=-1) / np.sum(w, axis=-1)
    return np.where(t > 0, u, -np.sin(math.pi * x))


def pinn_burgers_1d(
    width: int = 20,
    depth: int = 3,
    num_x: int = 32,
    num_t: int = 16,
    nu: float = BURGERS_NU,
    seed: int = 0,
    dtype: Any = jnp.float32,
    cluster: float = 0.0,
) -> NNXProblem:
    """1-D viscous Burgers PINN on ``x in [-1, 1], t in [0, 1]``.

    ``u_t + u u_x = nu u_xx``, ``u(x, 0) = -sin(pi x)``, ``u(+-1, t) = 0`` (the
    setting of Raissi, Perdikaris and Karniadakis 2019, ``nu = 0.01/pi``). Loss:
    mean squared residual at a ``num_x x num_t`` interior grid plus the mean
    squared errors of the initial condition (``2 num_x`` points) and of the
    boundary values (``2 num_t`` points). The reference solution is
    :func:`burgers_solution`; the loss is 0 only in the limit.

    The default grid (32 x 16) is cheap and does not resolve the shock that
    forms at ``x = 0`` (width ~``nu``, about 0.003 at ``t = 1``): a network can
    satisfy the equation at the points and miss the solution between them.
    ``cluster > 0`` places the interior ``x`` points at
    ``sinh(cluster s) / sinh(cluster)`` for ``s`` uniform in ``(-1, 1)``,
    denser near the shock by ``sinh(cluster) / cluster`` (about 6.8x for
    ``cluster=4``); ``benchmarks/bfgs_accuracy.py`` uses
    ``num_x=64, num_t=32, cluster=4`` (2048 interior points, spacing 0.0045 at
    ``x = 0``).

    ``width=20, depth=3`` has 921 parameters.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnxopt.problems import pinn_burgers_1d
        >>> pinn_burgers_1d(width=20, depth=2, dtype=jnp.float64).num_params()
        501
        >>> q = pinn_burgers_1d(num_x=8, num_t=2, cluster=4.0)
        >>> x = q.batch[0][:8, 0]  # the interior x points, denser near 0
        >>> bool(x[4] - x[3] < (x[1] - x[0]) / 4)
        True
    """
    from flax import nnx

    mlp = _mlp_class()
    if cluster < 0:
        raise ValueError(
            f"pinn_burgers_1d: cluster must be >= 0 (0 is a uniform grid), got "
            f"{cluster}"
        )
    s = np.linspace(-1.0, 1.0, num_x + 2)[1:-1]
    xs = np.sinh(cluster * s) / math.sinh(cluster) if cluster > 0 else s
    gx = jnp.asarray(xs, dtype=dtype)
    gt = jnp.linspace(0.0, 1.0, num_t + 1, dtype=dtype)[1:]
    mx, mt = jnp.meshgrid(gx, gt)
    interior = jnp.stack([mx.ravel(), mt.ravel()], axis=1)
    x0 = jnp.linspace(-1.0, 1.0, 2 * num_x, dtype=dtype)
    initial = jnp.stack([x0, jnp.zeros_like(x0)], axis=1)
    ones = jnp.ones_like(gt)
    boundary = jnp.concatenate(
        [jnp.stack([-ones, gt], axis=1), jnp.stack([ones, gt], axis=1)]
    )

    def make_model():
        return mlp(2, width, depth, 1, dtype=dtype, rngs=nnx.Rngs(seed))

    def loss_fn(model, interior, initial, boundary):
        def u(p):
            return model(p[None, :])[0, 0]

        res = burgers_residual(u, interior, nu)
        u0 = model(initial)[:, 0] + jnp.sin(math.pi * initial[:, 0])
        ub = model(boundary)[:, 0]
        return jnp.mean(res**2) + jnp.mean(u0**2) + jnp.mean(ub**2)

    return NNXProblem(
        name=f"pinn_burgers_w{width}d{depth}",
        make_model=make_model,
        loss_fn=loss_fn,
        batch=(interior, initial, boundary),
        f_star=0.0,
        notes="viscous Burgers, nu = 0.01/pi; f_star=0 is a lower bound; "
        "reference solution burgers_solution (Cole-Hopf)",
    )
