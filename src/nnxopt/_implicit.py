"""Implicit differentiation of ``nnxopt.solve``'s solution.

At a minimizer ``x*(theta)`` of ``f(x, theta)`` the gradient vanishes,
``grad_x f(x*(theta), theta) = 0``; differentiating that identity (the implicit
function theorem) gives the derivative of the solution without unrolling the
loop::

    H v = -(d/dtheta grad_x f) theta_dot,        H = d^2 f / dx^2 at x*,

``v`` being the tangent of ``x*`` along ``theta_dot``. ``solve`` runs its loop
on values with no derivative attached (``lax.stop_gradient``), then passes the
solution through :func:`attach`, the identity on the way forward, whose
``custom_jvp`` rule solves that system matrix-free: conjugate gradients on
Hessian-vector products (forward over reverse), inside
``lax.custom_linear_solve`` so that reverse mode (``jax.grad``, ``jax.vjp``)
transposes it into one more such solve. ``fun`` and ``aux`` at the solution
get the tangent of ``f(x*(theta), theta)`` and of ``aux`` along ``(v,
theta_dot)``.

What is differentiated when the solve did not converge: the same formula at
the returned point ``x^``, i.e. the derivative of the point where the gradient
keeps the value it has at ``x^`` (``grad_x f(x, theta) = grad_x f(x^,
theta^)``). It is the derivative of the minimizer only as far as ``x^`` is one;
``sol.status`` says whether it is.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _tree
from ._objective import unpack_loss
from ._tree import combine

PyTree = Any
_INT = jnp.int32

#: Default relative residual of the conjugate-gradient solve, per precision.
DEFAULT_CG_TOL = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}


class ImplicitDiffWarning(UserWarning):
    """The linear solve of an implicit derivative stopped short of its tolerance.

    Issued by the derivative of a solve with ``implicit=`` (:class:`ImplicitDiff`)
    when conjugate gradients stop on ``maxiter`` above ``tol`` or meet a
    direction of non-positive curvature; the message gives the relative
    residual and the iterations. The standard warning filters apply.

    Example:
        Make it an error:

        >>> import warnings, nnxopt
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", nnxopt.ImplicitDiffWarning)
        ...     try:
        ...         warnings.warn("CG stopped short", nnxopt.ImplicitDiffWarning)
        ...     except nnxopt.ImplicitDiffWarning as e:
        ...         print("error:", e)
        error: CG stopped short
    """


@dataclasses.dataclass(frozen=True)
class ImplicitDiff:
    """How :func:`nnxopt.solve` differentiates its solution (implicit function theorem).

    ``jax.grad``, ``jax.vjp`` and ``jax.jvp`` of a function of ``sol.params``
    (and ``sol.fun``, ``sol.aux``) with respect to the floating arrays in
    ``args``/``kwargs`` solve ``H v = -(d grad_x f / d theta) theta_dot`` at the
    solution by conjugate gradients on Hessian-vector products: each CG
    iteration costs one Hessian-vector product (about two gradient
    evaluations); nothing of the solve's loop is unrolled or stored. When CG
    stops on ``maxiter`` above ``tol``, or meets a direction of non-positive
    curvature (the point is not a strict minimum), an
    :class:`ImplicitDiffWarning` reports the relative residual and iterations.

    The derivative with respect to the starting ``params`` is zero (a strict
    local minimizer does not depend on where the search started); the other
    fields of the :class:`nnxopt.Solution` (state, counts, history) carry no
    derivative.

    Args:
        tol: the relative residual ``|H v - b| <= tol |b|`` at which CG stops;
            ``None``: ``1e-10`` in float64, ``1e-5`` in float32.
        maxiter: CG iterations at most; ``None``: ``min(max(2 n, 50), 1000)``
            for ``n`` parameters.
        warn: whether to warn when CG stops short of ``tol`` (see above).

    Example:
        >>> import jax, jax.numpy as jnp, nnxopt
        >>> def ridge(w, lam):
        ...     return jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
        >>> def w_star(lam):  # the minimizer is 1 / (1 + lam)
        ...     return nnxopt.solve(ridge, jnp.zeros(2), lam).params[0]
        >>> print(f"{jax.jit(jax.grad(w_star))(1.0):.6f}")  # -1 / (1 + lam)^2
        -0.250000
    """

    tol: float | None = None
    maxiter: int | None = None
    warn: bool = True

    def check(self, call: str) -> ImplicitDiff:
        """Return ``self`` after checking its values (at call time)."""
        if self.tol is not None and not (
            isinstance(self.tol, int | float) and self.tol > 0
        ):
            raise ValueError(
                f"{call}: implicit=ImplicitDiff(tol=...) must be a number > 0; "
                f"got {self.tol!r}."
            )
        if self.maxiter is not None and not (
            isinstance(self.maxiter, int) and self.maxiter >= 1
        ):
            raise ValueError(
                f"{call}: implicit=ImplicitDiff(maxiter=...) must be an int >= 1; "
                f"got {self.maxiter!r}."
            )
        return self


def is_traced(tree: PyTree) -> bool:
    """Whether any leaf of ``tree`` is a tracer (jit, vmap, grad, ...)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def detach(tree: PyTree) -> PyTree:
    """``tree`` without derivatives (``lax.stop_gradient``); as is when eager."""
    if not is_traced(tree):
        return tree
    return jax.tree.map(jax.lax.stop_gradient, tree)


@dataclasses.dataclass(frozen=True)
class _Problem:
    """What the derivative rule needs besides arrays (static)."""

    fun: Callable[..., Any]
    has_aux: bool
    static: Any
    options: ImplicitDiff
    call: str
    bounded: bool = False

    def split(self, x: PyTree, dynamic: list) -> tuple[jax.Array, Any]:
        args, kwargs = combine(dynamic, self.static)
        return unpack_loss(self.call, self.fun(x, *args, **kwargs), self.has_aux, "fun")


def attach(
    solution: Any,
    fun: Callable[..., Any],
    dynamic: list,
    static: Any,
    *,
    has_aux: bool,
    options: ImplicitDiff | None,
    call: str,
    bounded: bool = False,
) -> Any:
    """``solution`` with the implicit derivatives of ``params``, ``fun`` and ``aux``.

    ``dynamic`` are the array arguments as the caller passed them (with their
    derivatives); the solution was computed from them detached. Eager
    solves (nothing traced) are returned as they are.
    """
    if not is_traced(dynamic):
        return solution
    problem = _Problem(
        fun, has_aux, static, options or ImplicitDiff(), call, bounded=bounded
    )
    x, f, aux = _identity(problem, solution.params, solution.fun, solution.aux, dynamic)
    return dataclasses.replace(solution, params=x, fun=f, aux=aux)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _identity(problem: _Problem, x: PyTree, f: jax.Array, aux: Any, dynamic: list):
    del problem, dynamic
    return x, f, aux


@_identity.defjvp
def _identity_jvp(problem: _Problem, primals: tuple, tangents: tuple) -> tuple:
    x, f, aux, dynamic = primals
    if problem.bounded:
        # At a bound the solution is a kink of args: the implicit function
        # theorem holds on the free variables only, which is not built yet.
        raise NotImplementedError(
            f"{problem.call}: differentiating the solution of a solve with "
            "bounds= is not supported yet (the active bounds make it piecewise). "
            "Differentiate an unbounded solve, or a reparametrised one."
        )
    dynamic_dot = tangents[3]
    floating = [jnp.issubdtype(jnp.result_type(d), jnp.inexact) for d in dynamic]
    theta = [d for d, fl in zip(dynamic, floating, strict=True) if fl]
    theta_dot = [t for t, fl in zip(dynamic_dot, floating, strict=True) if fl]

    def with_theta(th: list) -> list:
        it = iter(th)
        return [next(it) if fl else d for d, fl in zip(dynamic, floating, strict=True)]

    def loss(xx: PyTree, th: list) -> jax.Array:
        return problem.split(xx, with_theta(th))[0]

    def grad_x(xx: PyTree, th: list) -> PyTree:
        return jax.grad(loss)(xx, th)

    # b = -(d grad_x f / d theta) theta_dot: the right-hand side.
    _, cross = jax.jvp(lambda th: grad_x(x, th), (theta,), (theta_dot,))
    # A leaf whose gradient does not depend on theta (a bias, under a penalty
    # on the weights only) gets a constant zero here, and reverse mode
    # (custom_linear_solve's transpose) needs every leaf linear in theta_dot:
    # add a zero that is.
    link = jnp.asarray(
        sum((jnp.sum(jnp.real(t)) for t in jax.tree.leaves(theta_dot)), 0.0)
    )
    rhs = jax.tree.map(lambda c: -c + (0 * link).astype(jnp.result_type(c)), cross)

    def hvp(v: PyTree) -> PyTree:
        return jax.jvp(lambda xx: grad_x(xx, theta), (x,), (v,))[1]

    size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(x))
    opts = problem.options
    tol = (
        DEFAULT_CG_TOL.get(jnp.result_type(f).name, 1e-5)
        if opts.tol is None
        else opts.tol
    )
    maxiter = min(max(2 * size, 50), 1000) if opts.maxiter is None else opts.maxiter
    solver = functools.partial(_cg, tol=tol, maxiter=maxiter, warn=opts.warn)
    v = jax.lax.custom_linear_solve(hvp, rhs, solver, symmetric=True)

    def outputs(xx: PyTree, th: list) -> tuple[jax.Array, Any]:
        return problem.split(xx, with_theta(th))

    _, (f_dot, aux_dot) = jax.jvp(outputs, (x, theta), (v, theta_dot))
    return (x, f, aux), (v, f_dot.astype(jnp.result_type(f)), aux_dot)


def _axpy(alpha: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(lambda xi, yi: (alpha * xi + yi).astype(yi.dtype), x, y)


def _cg(
    matvec: Callable[[PyTree], PyTree],
    b: PyTree,
    *,
    tol: float,
    maxiter: int,
    warn: bool,
) -> PyTree:
    """Conjugate gradients for ``matvec(x) = b`` from ``x = 0`` (``matvec`` SPD).

    Stops at ``|r| <= tol |b|``, after ``maxiter`` iterations, or on a
    direction of non-positive curvature (keeping the iterate before it).
    """
    rr0 = _tree.vdot(b, b)
    stop = (tol**2) * rr0

    def cond(c: tuple) -> jax.Array:
        _, _, _, rr, k, bad = c
        return (rr > stop) & (k < maxiter) & ~bad

    def body(c: tuple) -> tuple:
        x, r, p, rr, k, _ = c
        ap = matvec(p)
        pap = _tree.vdot(p, ap)
        bad = ~(pap > 0)
        alpha = jnp.where(bad, 0.0, rr / jnp.where(bad, 1.0, pap))
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rr_new = _tree.vdot(r, r)
        beta = rr_new / jnp.where(rr > 0, rr, 1.0)
        p = _axpy(beta, p, r)
        return x, r, p, jnp.where(bad, rr, rr_new), k + 1, bad

    zero = jax.tree.map(jnp.zeros_like, b)
    init = (zero, b, b, rr0, jnp.zeros((), _INT), jnp.zeros((), bool))
    x, _, _, rr, k, bad = jax.lax.while_loop(cond, body, init)
    if warn:
        residual = jnp.sqrt(rr / jnp.where(rr0 > 0, rr0, 1.0))
        jax.debug.callback(_report, residual, k, bad, tol, maxiter)
    return x


def _report(residual: Any, k: Any, bad: Any, tol: float, maxiter: int) -> None:
    residual, k, bad = np.asarray(residual), np.asarray(k), np.asarray(bad)
    if not (np.any(bad) or np.any(residual > tol)):
        return
    why = (
        "met a direction of non-positive curvature (the solution is not a strict "
        "minimum: did the solve converge?)"
        if np.any(bad)
        else f"reached its maxiter={maxiter}"
    )
    warnings.warn(
        f"nnxopt.solve: the conjugate-gradient solve of the implicit derivative "
        f"{why}; relative residual {float(np.max(residual)):.3e} > tol={tol:g} "
        f"after {int(np.max(k))} iterations. Raise "
        "implicit=nnxopt.ImplicitDiff(maxiter=...) or check sol.status.",
        ImplicitDiffWarning,
        stacklevel=2,
    )
