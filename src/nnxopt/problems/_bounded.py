"""Bound-constrained problems: the set L-BFGS-B is tested and benchmarked on.

Hock–Schittkowski problems with simple bounds (published optima), bounded
Rosenbrock and quadratics, non-negative and bounded linear least squares
(references: ``scipy.optimize.nnls`` and ``lsq_linear``, computed where used)
and a Gaussian-process marginal likelihood with sklearn's bounds. Some optima
are interior, some on a bound, some starts outside the box (projected).

:func:`stack_bounded` pads a set to one size with fixed coordinates
(``lower == upper``) and selects a problem by an integer argument, so that one
compiled solve serves the whole set.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any


@dataclasses.dataclass(frozen=True)
class BoundedProblem:
    """A smooth problem on a flat vector with box bounds.

    Attributes:
        name: unique short name.
        fn: ``fn(x) -> scalar`` for a 1-D jax array ``x`` (may be nan outside
            the box, e.g. a logarithm of ``x - lower``).
        x0: the start, float64 ``(n,)`` (may lie outside the box).
        lower, upper: the bounds, float64 ``(n,)`` (``±inf`` free).
        f_star: the known minimum of the basin reached from ``x0``, or None
            (then the reference is computed where used, e.g. scipy's).
        x_star: a known minimiser, or None.
        on_bound: whether the minimiser has active bounds.
        notes: provenance.
    """

    name: str
    fn: Callable[[Array], Array]
    x0: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    f_star: float | None = None
    x_star: np.ndarray | None = None
    on_bound: bool = False
    notes: str = ""

    @property
    def n(self) -> int:
        """Number of parameters."""
        return int(self.x0.shape[0])

    def numpy_value_and_grad(self) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
        """``x -> (f(x), grad f(x))`` on numpy arrays (jitted), for scipy's
        ``minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=self.bounds)``."""
        fg = jax.jit(jax.value_and_grad(self.fn))

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            value, grad = fg(jnp.asarray(x))
            return float(value), np.asarray(grad)

        return fun

    @property
    def bounds(self) -> list[tuple[float | None, float | None]]:
        """The bounds as scipy's ``[(lower_i, upper_i), ...]`` (None for inf)."""
        return [
            (None if math.isinf(lo) else lo, None if math.isinf(up) else up)
            for lo, up in zip(self.lower.tolist(), self.upper.tolist(), strict=True)
        ]


def _f64(values: Any, n: int | None = None) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    return out if n is None else np.broadcast_to(out, (n,)).copy()


def _problem(name: str, fn: Callable, x0: Any, lower: Any, upper: Any, **kw: Any) -> BoundedProblem:  # fmt: skip
    x0 = _f64(x0)
    n = x0.shape[0]
    x_star = kw.pop("x_star", None)
    return BoundedProblem(
        name, fn, x0, _f64(lower, n), _f64(upper, n),
        x_star=None if x_star is None else _f64(x_star, n), **kw,
    )  # fmt: skip


def _rosen(x: Array) -> Array:
    return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def hs1() -> BoundedProblem:
    """HS 1: Rosenbrock with ``x2 >= -1.5``; interior optimum ``(1, 1)``."""
    return _problem(
        "hs1", _rosen, [-2.0, 1.0], [-np.inf, -1.5], np.inf,
        f_star=0.0, x_star=[1.0, 1.0], notes="Hock & Schittkowski (1981) no. 1",
    )  # fmt: skip


def hs2() -> BoundedProblem:
    """HS 2: Rosenbrock with ``x2 >= 1.5`` (active); start outside the box.

    The start is ``(0.5, 1)``, not HS's ``(-2, 1)``, from which L-BFGS-B
    (scipy's too) reaches the other local minimum, ``x1 < 0``, ``f = 4.94``.
    """
    # On x2 = 1.5 the stationary x1 solves 400 x1^3 - 598 x1 - 2 = 0.
    roots = np.roots([400.0, 0.0, -598.0, -2.0])
    x1 = float(max(r.real for r in roots if abs(r.imag) < 1e-12))
    x_star = [x1, 1.5]
    return _problem(
        "hs2", _rosen, [0.5, 1.0], [-np.inf, 1.5], np.inf,
        f_star=float(_rosen(np.asarray(x_star))), x_star=x_star, on_bound=True,
        notes="Hock & Schittkowski no. 2; x* from the cubic on the bound",
    )  # fmt: skip


def hs3() -> BoundedProblem:
    """HS 3: ``x2 + 1e-5 (x2 - x1)^2``, ``x2 >= 0``; optimum ``(0, 0)``."""

    def fn(x: Array) -> Array:
        return x[1] + 1e-5 * (x[1] - x[0]) ** 2

    return _problem(
        "hs3", fn, [10.0, 1.0], [-np.inf, 0.0], np.inf, f_star=0.0,
        on_bound=True, notes="Hock & Schittkowski no. 3 (x1 badly scaled)",
    )  # fmt: skip


def hs4() -> BoundedProblem:
    """HS 4: ``(x1 + 1)^3 / 3 + x2``, ``x1 >= 1, x2 >= 0``; ``f* = 8/3``."""

    def fn(x: Array) -> Array:
        return (x[0] + 1) ** 3 / 3 + x[1]

    return _problem(
        "hs4", fn, [1.125, 0.125], [1.0, 0.0], np.inf, f_star=8 / 3,
        x_star=[1.0, 0.0], on_bound=True, notes="Hock & Schittkowski no. 4",
    )  # fmt: skip


def hs5() -> BoundedProblem:
    """HS 5: ``sin(x1 + x2) + (x1 - x2)^2 - 1.5 x1 + 2.5 x2 + 1``; interior."""

    def fn(x: Array) -> Array:
        return jnp.sin(x[0] + x[1]) + (x[0] - x[1]) ** 2 - 1.5 * x[0] + 2.5 * x[1] + 1

    c = math.pi / 3
    return _problem(
        "hs5", fn, [0.0, 0.0], [-1.5, -3.0], [4.0, 3.0],
        f_star=-math.sqrt(3) / 2 - c, x_star=[0.5 - c, -0.5 - c],
        notes="Hock & Schittkowski no. 5",
    )  # fmt: skip


def hs38() -> BoundedProblem:
    """HS 38: Colville's (Wood) function in ``[-10, 10]^4``; interior optimum 1."""

    def fn(x: Array) -> Array:
        a, b, c, d = x[0], x[1], x[2], x[3]
        return (
            100 * (b - a**2) ** 2 + (1 - a) ** 2 + 90 * (d - c**2) ** 2
            + (1 - c) ** 2 + 10.1 * ((b - 1) ** 2 + (d - 1) ** 2)
            + 19.8 * (b - 1) * (d - 1)
        )  # fmt: skip

    return _problem(
        "hs38", fn, [-3.0, -1.0, -3.0, -1.0], -10.0, 10.0, f_star=0.0,
        x_star=[1.0] * 4, notes="Hock & Schittkowski no. 38",
    )  # fmt: skip


def hs45() -> BoundedProblem:
    """HS 45: ``2 - prod(x) / 120`` on ``0 <= x_i <= i``; every bound active."""

    def fn(x: Array) -> Array:
        return 2 - jnp.prod(x) / 120

    return _problem(
        "hs45", fn, [2.0] * 5, 0.0, [1.0, 2.0, 3.0, 4.0, 5.0], f_star=1.0,
        x_star=[1.0, 2.0, 3.0, 4.0, 5.0], on_bound=True,
        notes="Hock & Schittkowski no. 45",
    )  # fmt: skip


def hs110() -> BoundedProblem:
    """HS 110 (n = 10): logarithms, nan outside ``(2, 10)``; interior optimum."""

    def fn(x: Array) -> Array:
        logs = jnp.log(x - 2) ** 2 + jnp.log(10 - x) ** 2
        return jnp.sum(logs) - jnp.prod(x) ** 0.2

    # Stationary x (all equal, by symmetry): 2 ln(x-2)/(x-2) - 2 ln(10-x)/(10-x)
    # = 0.2 x^(10*0.2 - 1) = 0.2 x; solved by bisection at import.
    def dphi(t: float) -> float:
        return 2 * math.log(t - 2) / (t - 2) - 2 * math.log(10 - t) / (10 - t) - 0.2 * t

    lo_t, hi_t = 8.0, 9.9
    for _ in range(200):
        mid = 0.5 * (lo_t + hi_t)
        lo_t, hi_t = (lo_t, mid) if dphi(mid) > 0 else (mid, hi_t)
    t = 0.5 * (lo_t + hi_t)
    f_star = 10 * (math.log(t - 2) ** 2 + math.log(10 - t) ** 2) - t**2
    return _problem(
        "hs110", fn, [9.0] * 10, 2.001, 9.999, f_star=f_star, x_star=[t] * 10,
        notes="Hock & Schittkowski no. 110 (f* = -45.778...)",
    )  # fmt: skip


def rosenbrock_box(n: int = 10) -> BoundedProblem:
    """Extended Rosenbrock with ``-2 <= x <= 0.5``: the optimum is on the bound."""
    return _problem(
        f"rosenbrock_box{n}", _rosen, [-1.2] * n, -2.0, 0.5, on_bound=True,
        notes="reference: scipy L-BFGS-B",
    )  # fmt: skip


def _spd(n: int, seed: int, cond: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.logspace(0, math.log10(cond), n)) @ q.T


def _shifted_quadratic(a: np.ndarray, c: np.ndarray) -> Callable[[Array], Array]:
    """``x -> (x - c)^T A (x - c) / 2`` in the dtype of ``x``."""

    def fn(x: Array) -> Array:
        r = x - jnp.asarray(c, x.dtype)
        return 0.5 * r @ (jnp.asarray(a, x.dtype) @ r)

    return fn


def quadratic_interior(n: int = 8, seed: int = 2) -> BoundedProblem:
    """``(x - c)^T A (x - c) / 2`` with ``c`` inside ``[-1, 1]^n``: ``x* = c``."""
    a = _spd(n, seed, 1e3)
    c = np.random.default_rng(seed + 1).uniform(-0.8, 0.8, n)

    fn = _shifted_quadratic(a, c)

    return _problem(
        "quadratic_interior", fn, np.zeros(n), -1.0, 1.0, f_star=0.0, x_star=c,
        notes="seeded SPD A, condition 1e3",
    )  # fmt: skip


def quadratic_active(n: int = 8, seed: int = 3) -> BoundedProblem:
    """``(x - c)^T A (x - c) / 2`` with ``c`` outside ``[-1, 1]^n`` (dense A)."""
    a = _spd(n, seed, 1e2)
    c = np.random.default_rng(seed + 1).uniform(-3, 3, n)

    fn = _shifted_quadratic(a, c)

    return _problem(
        "quadratic_active", fn, np.zeros(n), -1.0, 1.0, on_bound=True,
        notes="seeded SPD A, condition 1e2; reference: scipy L-BFGS-B",
    )  # fmt: skip


def least_squares_data(m: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(A, b)`` of the least-squares problems."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n)), rng.standard_normal(m)


def _least_squares(a: np.ndarray, b: np.ndarray) -> Callable[[Array], Array]:
    """``x -> ||A x - b||^2`` in the dtype of ``x`` (NNLS and the boxed fit)."""

    def fn(x: Array) -> Array:
        r = jnp.asarray(a, x.dtype) @ x - jnp.asarray(b, x.dtype)
        return r @ r

    return fn


def nnls(m: int = 20, n: int = 8, seed: int = 4) -> BoundedProblem:
    """Non-negative least squares ``||A x - b||^2``, ``x >= 0`` (``scipy.optimize.nnls``)."""
    fn = _least_squares(*least_squares_data(m, n, seed))
    return _problem(
        "nnls", fn, np.ones(n), 0.0, np.inf, on_bound=True,
        notes="reference: scipy.optimize.nnls(A, b) (least_squares_data(m, n, seed))",
    )  # fmt: skip


def bounded_least_squares(m: int = 30, n: int = 8, seed: int = 5) -> BoundedProblem:
    """``||A x - b||^2`` on ``[-0.2, 0.2]^n`` (``scipy.optimize.lsq_linear``)."""
    fn = _least_squares(*least_squares_data(m, n, seed))
    return _problem(
        "bounded_least_squares", fn, np.zeros(n), -0.2, 0.2, on_bound=True,
        notes="reference: scipy.optimize.lsq_linear(A, b, bounds=(-0.2, 0.2))",
    )  # fmt: skip


def gp_data(m: int = 20, seed: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Seeded 1-D regression data of :func:`gp_likelihood`."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 5, m))
    return x, np.sin(x) + 0.1 * rng.standard_normal(m)


#: Bounds of :func:`gp_likelihood` on (amplitude, lengthscale, noise level),
#: as sklearn's kernel arguments: the noise bound is active at the optimum.
GP_BOUNDS = ((1e-5, 1e5), (1e-5, 1e5), (0.05, 10.0))


def gp_negative_log_likelihood(theta: Array, x: Array, y: Array) -> Array:
    """``-log p(y | x, theta)`` of a GP with kernel ``c * RBF(l) + White(s)``.

    ``theta = log(c, l, s)`` as in sklearn (``ConstantKernel(c) * RBF(l) +
    WhiteKernel(s)``, ``normalize_y=False``).
    """
    c, ell, s = jnp.exp(theta[0]), jnp.exp(theta[1]), jnp.exp(theta[2])
    sq = (x[:, None] - x[None, :]) ** 2
    k = c * jnp.exp(-0.5 * sq / ell**2) + s * jnp.eye(x.shape[0], dtype=x.dtype)
    chol = jnp.linalg.cholesky(k)
    alpha = jax.scipy.linalg.cho_solve((chol, True), y)
    n = x.shape[0]
    return (
        0.5 * y @ alpha
        + jnp.sum(jnp.log(jnp.diagonal(chol)))
        + 0.5 * n * math.log(2 * math.pi)
    )


def gp_likelihood() -> BoundedProblem:
    """GP marginal likelihood over log hyperparameters, sklearn's bounds."""
    x, y = gp_data()

    def fn(theta: Array) -> Array:
        return gp_negative_log_likelihood(
            theta, jnp.asarray(x, theta.dtype), jnp.asarray(y, theta.dtype)
        )

    logs = np.log(np.asarray(GP_BOUNDS))
    return _problem(
        "gp_likelihood", fn, np.zeros(3), logs[:, 0], logs[:, 1], on_bound=True,
        notes="reference: sklearn GaussianProcessRegressor (docs/bounds.md)",
    )  # fmt: skip


def bounded_problems() -> tuple[BoundedProblem, ...]:
    """Return the bounded set (13 problems, at most 10 parameters)."""
    return (
        hs1(), hs2(), hs3(), hs4(), hs5(), hs38(), hs45(), hs110(),
        rosenbrock_box(), quadratic_interior(), quadratic_active(), nnls(),
        bounded_least_squares(), gp_likelihood(),
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class BoundedStack:
    """A bounded set padded to one size: ``fn(x, k)`` is problem ``k``.

    Padding coordinates are fixed at 0 (``lower == upper == 0``), which
    L-BFGS-B never moves; so one compiled solve serves every problem.
    """

    problems: tuple[BoundedProblem, ...]
    n: int

    def fn(self, x: Array, k: Array) -> Array:
        """Problem ``k``'s objective at the first ``n_k`` coordinates of ``x``."""
        branches = [functools.partial(_first, p.fn, p.n) for p in self.problems]
        return jax.lax.switch(k, branches, x)

    def padded(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x0, lower, upper)`` of problem ``k``, padded to ``n``."""
        p = self.problems[k]
        pad = np.zeros(self.n - p.n)
        return tuple(np.concatenate([v, pad]) for v in (p.x0, p.lower, p.upper))  # type: ignore[return-value]


def _first(fn: Callable, n: int, x: Array) -> Array:
    return fn(x[:n])


def stack_bounded(problems: Sequence[BoundedProblem] | None = None) -> BoundedStack:
    """One objective for a whole bounded set (default :func:`bounded_problems`)."""
    problems = tuple(bounded_problems() if problems is None else problems)
    return BoundedStack(problems, max(p.n for p in problems))
