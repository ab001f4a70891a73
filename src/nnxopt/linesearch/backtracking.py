"""Armijo backtracking with value-only trials as an optax transform."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._status import SearchStatus
from . import _common, _settings
from ._common import Outcome, Point, Problem

_CALL = "nnxopt.linesearch.backtracking"
_INT = jnp.int32


class BacktrackingState(_common.LineSearchState):
    """State of :func:`backtracking`: the fields of every line-search state
    (``learning_rate``, ``value``, ``grad``, ``status``, ``aux``, ``info``);
    ``info.num_grad_evals`` is 1 when a step was taken, 0 for the zero step;
    that value-and-gradient evaluation is counted in ``info.num_value_evals``
    too.

    Example:
        >>> from nnxopt import linesearch
        >>> linesearch.BacktrackingState._fields
        ('learning_rate', 'value', 'grad', 'status', 'aux', 'info')
    """

    __slots__ = ()


class _Carry(NamedTuple):
    alpha: jax.Array
    best_alpha: jax.Array
    best_value: jax.Array
    best_aux: Any
    last_value: jax.Array
    last_aux: Any
    accepted: jax.Array
    any_finite: jax.Array
    n: jax.Array


def _search(prob: Problem, c1, factor, max_steps) -> Outcome:
    start = prob.start
    f0, g0 = start.value, start.slope
    init = _Carry(
        alpha=prob.alpha0,
        best_alpha=jnp.zeros_like(f0),
        best_value=f0,
        best_aux=start.aux,
        last_value=f0,
        last_aux=start.aux,
        accepted=jnp.asarray(False),
        any_finite=jnp.asarray(False),
        n=_INT(0),
    )

    def cond(c: _Carry):
        return prob.can_search & ~c.accepted & (c.n < max_steps)

    def body(c: _Carry) -> _Carry:
        v, aux = prob.evaluate_value(c.alpha)
        finite = jnp.isfinite(v)
        # A non-finite value fails this test too, so it is shrunk away from.
        # The test implies v < f0; once c1 * alpha * g0 rounds away against f0
        # (a tiny step, e.g. next to a wall of non-finite values), v == f0
        # would pass without any decrease: require it explicitly.
        armijo = finite & (v <= f0 + c1 * c.alpha * g0) & (v < f0)
        better = finite & (v < c.best_value)
        return _Carry(
            alpha=jnp.where(armijo, c.alpha, factor * c.alpha),
            best_alpha=jnp.where(better, c.alpha, c.best_alpha),
            best_value=jnp.where(better, v, c.best_value),
            best_aux=_common.select(better, aux, c.best_aux),
            last_value=v,
            last_aux=aux,
            accepted=armijo,
            any_finite=c.any_finite | finite,
            n=c.n + 1,
        )

    c = jax.lax.while_loop(cond, body, init)
    # Armijo accepted: c.alpha; else the lowest point seen, if below f0.
    moved = c.accepted | (c.best_value < f0)
    alpha = jnp.where(c.accepted, c.alpha, c.best_alpha)

    def with_grad(_):
        return prob.evaluate(alpha)

    def without(_):
        return start

    # The one gradient evaluation of the search, at the accepted point only.
    p = jax.lax.cond(moved, with_grad, without, None)
    # Keep the value (and aux) the acceptance test saw.
    value = jnp.where(c.accepted, c.last_value, c.best_value)
    aux = _common.select(c.accepted, c.last_aux, c.best_aux)
    p = p._replace(
        value=jnp.where(moved, value, f0),
        aux=_common.select(moved, aux, start.aux),
    )
    status = jnp.where(
        c.accepted,
        _INT(SearchStatus.SUCCESS),
        jnp.where(
            moved,
            _INT(SearchStatus.MAX_LINESEARCH_STEPS),
            jnp.where(
                c.any_finite,
                _INT(SearchStatus.LINESEARCH_FAILED),
                _INT(SearchStatus.NON_FINITE),
            ),
        ),
    )
    point = Point(jnp.where(moved, alpha, 0), p.value, p.slope, p.grad, p.aux)
    # The value and gradient at the accepted step are one more evaluation of
    # the loss: num_value_evals counts every forward pass (the loop's nfev).
    return Outcome(point, status, c.n, c.n + moved, moved.astype(_INT))


def backtracking(
    *,
    slope_rtol: float = 1e-4,
    decrease_factor: float = 0.5,
    max_linesearch_steps: int = 30,
    max_learning_rate: float | None = None,
    initial_step: float = 1.0,
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Scale the direction by the first step with sufficient decrease (Armijo).

    Tries :math:`a = a_0, \beta a_0, \beta^2 a_0, \dots` (``initial_step``
    times powers of ``decrease_factor``) until

    .. math:: \phi(a) \le \phi(0) + c_1 a \phi'(0),

    where :math:`\phi(a) = f(x + a d)`. Trials evaluate the loss only; the
    gradient is evaluated once, at the accepted point, and returned in the
    state, so that the next iteration can reuse it. Use it when gradients are
    expensive compared with values, or for gradient descent
    (``optax.chain(optax.sgd(1.0), backtracking())``); for L-BFGS prefer a
    Wolfe search, which keeps the curvature pairs positive.

    A direction that is not a descent direction is replaced by the negative
    gradient (status ``NOT_DESCENT``); a non-finite trial value is treated as
    a failed test and shrunk; if no trial satisfies the condition within
    ``max_linesearch_steps`` evaluations, the lowest finite point seen is
    taken if it decreased the loss, else the zero step.

    Args:
        slope_rtol: sufficient-decrease constant :math:`c_1`, in (0, 1).
        decrease_factor: :math:`\beta`, the factor applied to a rejected
            step, in (0, 1).
        max_linesearch_steps: the most value evaluations per search.
        max_learning_rate: upper bound on the step; None for none.
        initial_step: the first trial step of every search (clipped to
            ``max_learning_rate``).
        has_aux: whether ``value_fn`` returns ``(value, aux)``.

    Returns:
        The transform, with state :class:`BacktrackingState`; call its ``update``
        as :mod:`nnxopt.linesearch` describes.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from nnxopt.linesearch import backtracking
        >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
        >>> x = jnp.zeros(2)
        >>> opt = optax.chain(optax.sgd(1.0), backtracking())
        >>> state = opt.init(x)
        >>> v, g = jax.value_and_grad(f)(x)
        >>> u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
        >>> optax.apply_updates(x, u).tolist()
        [3.0, 3.0]

    References:
        L. Armijo, "Minimization of functions having Lipschitz continuous first
        partial derivatives", Pacific J. Math. 16(1):1-3, 1966.
        J. Nocedal and S. J. Wright, *Numerical Optimization*, 2nd ed.,
        Springer, 2006: algorithm 3.1.
    """
    cfg = _settings.check_settings(
        _CALL, slope_rtol, None, max_linesearch_steps, max_learning_rate, None,
        initial_step, has_aux,
    )  # fmt: skip
    factor = _settings.check_float(
        _CALL, "decrease_factor", decrease_factor, low=0.0, high=1.0,
        hint="Typical: 0.5.",
    )  # fmt: skip

    def algorithm(prob: Problem) -> Outcome:
        return _search(prob, cfg.slope_rtol, factor, cfg.max_steps)

    return _common.transform(_CALL, cfg, BacktrackingState, algorithm)
