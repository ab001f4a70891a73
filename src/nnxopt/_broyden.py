"""The self-scaled Broyden family of inverse-Hessian updates (dense, on arrays).

Pure matrix maths of ``nnxopt.bfgs``: the rank-two update of ``H`` and the
self-scaling and Broyden parameters ``tau_k`` and ``phi_k``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._tree import dot, gathered


def inverse_hessian_update(
    inv_hessian: jax.Array,
    s: jax.Array,
    y: jax.Array,
    tau: jax.Array | float = 1.0,
    phi: jax.Array | float = 1.0,
) -> jax.Array:
    r"""Return the self-scaled Broyden-family update of the inverse Hessian ``H``.

    .. math::

        H_+ = \frac{1}{\tau}\Big(H - \frac{H y\,(H y)^\top}{y^\top H y}
              + \phi\, v v^\top\Big) + \frac{s s^\top}{s^\top y},\qquad
        v = \sqrt{y^\top H y}\,\Big(\frac{s}{s^\top y} - \frac{H y}{y^\top H y}\Big),

    evaluated in expanded form as ``H / tau`` plus three signed symmetric
    rank-one terms (so ``H_+`` is exactly symmetric), in one pass over ``H``.
    ``tau = phi = 1`` is BFGS, the textbook
    ``(I - rho s y^T) H (I - rho y s^T) + rho s s^T``;
    ``phi = 0`` is DFP. Every ``tau, phi`` satisfies the secant equation
    ``H_+ y = s`` (``v·y = 0``).

    Args:
        inv_hessian: ``H``, symmetric, shape ``(n, n)``.
        s: the step, shape ``(n,)``.
        y: the change of gradient, shape ``(n,)``; ``s·y > 0``.
        tau: the self-scaling factor ``tau_k`` (1: none).
        phi: the Broyden parameter of the inverse update (1: BFGS).

    Returns:
        ``H_+``, shape ``(n, n)``.

    References:
        Urbán, Stefanou & Pons, Unveiling the optimization process of physics
        informed neural networks, J. Comput. Phys. 523 (2025) 113656,
        arXiv:2405.04230, section 2 (the self-scaled Broyden update).
    """
    hy = inv_hessian @ gathered(y)
    return rank_two_update(inv_hessian, s, y, hy, tau, phi)


def rank_two_update(
    inv_hessian: jax.Array,
    s: jax.Array,
    y: jax.Array,
    hy: jax.Array,
    tau: jax.Array | float,
    phi: jax.Array | float,
) -> jax.Array:
    """``inverse_hessian_update`` given ``hy = H y``: one elementwise pass over H."""
    sy = dot(s, y)
    yhy = dot(y, hy)
    tau = jnp.asarray(tau, inv_hessian.dtype)
    phi = jnp.asarray(phi, inv_hessian.dtype)
    # v v^T expanded: yHy s s^T / sy^2 - (s Hy^T + Hy s^T) / sy + Hy Hy^T / yHy.
    c_hh = -(1 - phi) / (tau * yhy)
    c_sh = -phi / (tau * sy)
    c_ss = phi * yhy / (tau * sy * sy) + 1 / sy
    # Written as H / tau + sum_k sign_k p_k p_k^T, each entry is exactly
    # symmetric even where multiply-adds are contracted (c x_i x_j is not:
    # it rounds (c x_i) x_j and (c x_j) x_i differently, a drift that grows
    # over the updates). The cross term by polarization, s and Hy first scaled
    # to one norm so that it cancels little: with u = a s, w = Hy / a,
    # s Hy^T + Hy s^T = (u + w)(u + w)^T - u u^T - w w^T.
    ns, nh = jnp.sqrt(dot(s, s)), jnp.sqrt(dot(hy, hy))
    a = jnp.sqrt(jnp.where((ns > 0) & (nh > 0), nh / jnp.where(ns > 0, ns, 1), 1))
    u, w = a * s, hy / a
    out = inv_hessian / tau
    for coef, p in (
        (c_ss / (a * a) - c_sh, u),
        (c_sh, u + w),
        (c_hh * a * a - c_sh, w),
    ):
        root = jnp.sqrt(jnp.abs(coef)) * p
        # rows like the vector, columns replicated: H's layout
        out = out + jnp.outer(jnp.sign(coef) * root, gathered(root))
    return out.astype(inv_hessian.dtype)


def scaling_parameters(
    b: jax.Array,
    h: jax.Array,
    n: int,
    self_scaling: bool,
    broyden_phi: float | None,
) -> tuple[jax.Array, jax.Array]:
    r"""Return ``(tau_k, phi_k)`` of the self-scaled Broyden update.

    With ``b = s·B s / s·y``, ``h = y·H y / s·y`` (``B = H^{-1}``) and
    ``a = b h - 1 >= 0``:

    - ``tau^(1) = min(1, 1/b)``: the Oren–Luenberger factor ``s·y / s·B s``
      capped at 1 (Al-Baali's choice), used when ``self_scaling`` and a fixed
      ``broyden_phi`` is given (``broyden_phi=1``: self-scaled BFGS).
    - ``broyden_phi=None``: Urbán, Stefanou & Pons' self-scaled Broyden,
      ``c = sqrt(a/(1+a))``, ``rho^- = min(1, h (1-c))``,
      ``theta^- = (rho^- - 1)/a``, ``theta^+ = 1/rho^-``,
      ``theta = max(theta^-, min(theta^+, (1-b)/b))``, ``sigma = 1 + a theta``,
      ``phi = (1 - theta)/sigma`` and, when ``self_scaling``,
      ``tau = tau^(1) min(sigma^(-1/(n-1)), 1/theta)`` if ``theta > 0``, else
      ``min(tau^(1) sigma^(-1/(n-1)), sigma)``.

    Without ``self_scaling`` ``tau = 1``. At ``b = h = 1`` (``H y = s``
    already) every choice gives ``tau = phi = 1``: plain BFGS.
    """
    dtype = jnp.result_type(b)
    one = jnp.ones((), dtype)
    b = jnp.where(b > 0, b, 1)
    tau1 = jnp.minimum(1, 1 / b) if self_scaling else one
    if broyden_phi is not None:
        return tau1.astype(dtype), jnp.asarray(broyden_phi, dtype)
    # a >= 0 by Cauchy-Schwarz (in the B inner product); clip round-off.
    a = jnp.maximum(b * h - 1, 0)
    c = jnp.sqrt(a / (1 + a))
    rho = jnp.minimum(1, h * (1 - c))
    rho = jnp.where(rho > 0, rho, 1)
    theta_minus = jnp.where(a > 0, (rho - 1) / jnp.where(a > 0, a, 1), -jnp.inf)
    theta = jnp.maximum(theta_minus, jnp.minimum(1 / rho, (1 - b) / b))
    sigma = 1 + a * theta
    power = sigma ** (-1 / (n - 1)) if n > 1 else one
    phi = (1 - theta) / sigma
    if not self_scaling:
        return one, phi.astype(dtype)
    positive = theta > 0
    tau = jnp.where(
        positive,
        tau1 * jnp.minimum(power, 1 / jnp.where(positive, theta, 1)),
        jnp.minimum(tau1 * power, sigma),
    )
    return tau.astype(dtype), phi.astype(dtype)
