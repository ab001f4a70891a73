"""The strong-Wolfe "zoom" line search of Nocedal and Wright as an optax transform."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import _common, _settings
from ._common import Outcome, Point, Problem

_CALL = "nnxopt.linesearch.zoom"
_INT = jnp.int32
# Interpolated steps may lie anywhere inside the interval (a good cubic step
# often lands next to an end); instead, as in Moré–Thuente, bisect whenever
# the interval did not shrink by this factor over two steps.
_SHRINK = 0.66
# Extrapolation while bracketing: the next step is in [1.1, 4] times the
# last increase (Moré–Thuente's limits).
_XTRAPL, _XTRAPU = 1.1, 4.0


class ZoomState(_common.LineSearchState):
    """State of :func:`zoom`: the fields of every line-search state
    (``learning_rate``, ``value``, ``grad``, ``status``, ``aux``, ``info``).

    Example:
        As ``init`` makes it: no search yet, so the value is ``inf`` and the
        gradient zeros:

        >>> import jax.numpy as jnp
        >>> from nnxopt import linesearch
        >>> state = linesearch.zoom().init(jnp.zeros(3))
        >>> float(state.value), state.grad.tolist()
        (inf, [0.0, 0.0, 0.0])
    """

    __slots__ = ()


def cubic_min(a, fa, ga, b, fb, gb):
    """Minimizer of the cubic interpolating ``(a, fa, ga)`` and ``(b, fb, gb)``.

    Nocedal and Wright (2006), eq. (3.59); nan when the cubic has no minimizer.
    """
    d1 = ga + gb - 3.0 * (fa - fb) / (a - b)
    d2 = jnp.sign(b - a) * jnp.sqrt(d1 * d1 - ga * gb)
    return b - (b - a) * (gb + d2 - d1) / (gb - ga + 2.0 * d2)


def _interpolate(lo: Point, hi: Point, bisect):
    """A trial step strictly inside (lo, hi): cubic, else quadratic, else bisection."""
    a, b = lo.alpha, hi.alpha
    left, right = jnp.minimum(a, b), jnp.maximum(a, b)

    def inside(t):
        return ~bisect & jnp.isfinite(t) & (t > left) & (t < right)

    cubic = cubic_min(a, lo.value, lo.slope, b, hi.value, hi.slope)
    # Quadratic through phi(lo), phi'(lo) and phi(hi): needs no slope at hi.
    h = b - a
    quad = a - lo.slope * h * h / (2.0 * (hi.value - lo.value - lo.slope * h))
    mid = a + 0.5 * h
    return jnp.where(inside(cubic), cubic, jnp.where(inside(quad), quad, mid))


class _Carry(NamedTuple):
    alpha: jax.Array  # the next trial
    zooming: jax.Array
    prev: Point
    lo: Point
    hi: Point
    width: jax.Array  # |hi - lo| one and two zoom steps ago
    width1: jax.Array
    track: _common.Track


def _search(prob: Problem, cfg: _settings.Settings) -> Outcome:
    c1, c2, xtol = cfg.slope_rtol, cfg.curv_rtol, cfg.xtol
    amax, max_steps = cfg.max_learning_rate, cfg.max_steps
    start = prob.start
    f0, g0 = start.value, start.slope
    init = _Carry(
        alpha=prob.alpha0,
        zooming=jnp.asarray(False),
        prev=start,
        lo=start,
        hi=start,
        width=jnp.asarray(jnp.inf, start.value.dtype),
        width1=jnp.asarray(jnp.inf, start.value.dtype),
        track=_common.start_track(prob),
    )

    def body(c: _Carry) -> _Carry:
        p = prob.evaluate(c.alpha)
        finite = _common.is_finite_point(p)
        curvature = finite & (jnp.abs(p.slope) <= -c2 * g0)
        armijo = finite & (p.value <= f0 + c1 * p.alpha * g0)

        # Bracketing (Nocedal & Wright alg. 3.5): a non-finite or too high
        # point, or one higher than the previous, ends the bracket on the
        # right; an increasing slope ends it on the left.
        too_high = ~armijo | ((c.track.n > 0) & (p.value >= c.prev.value))
        at_max = armijo & ~curvature & (p.slope < 0) & (p.alpha >= amax)
        b_lo = _common.select(too_high, c.prev, p)
        b_hi = _common.select(too_high, p, c.prev)
        b_zoom = too_high | (p.slope >= 0)
        # Otherwise extrapolate, using the cubic through prev and p when it
        # points beyond p.
        step = p.alpha - c.prev.alpha
        ext = cubic_min(
            c.prev.alpha, c.prev.value, c.prev.slope, p.alpha, p.value, p.slope
        )
        ext = jnp.where(jnp.isfinite(ext), ext, p.alpha + _XTRAPU * step)
        ext = jnp.clip(ext, p.alpha + _XTRAPL * step, p.alpha + _XTRAPU * step)
        ext = jnp.minimum(ext, amax)

        # Zoom (alg. 3.6): keep lo the lowest point with sufficient
        # decrease and phi'(lo) * (hi - lo) < 0.
        z_high = ~armijo | (p.value >= c.lo.value)
        flip = p.slope * (c.hi.alpha - c.lo.alpha) >= 0
        z_lo = _common.select(z_high, c.lo, p)
        z_hi = _common.select(z_high, p, _common.select(flip, c.lo, c.hi))

        zooming = c.zooming | b_zoom
        lo = _common.select(c.zooming, z_lo, b_lo)
        hi = _common.select(c.zooming, z_hi, b_hi)
        width = jnp.abs(hi.alpha - lo.alpha)
        stalled = c.zooming & (width >= _SHRINK * c.width1)
        nxt = jnp.where(zooming, _interpolate(lo, hi, stalled), ext)
        tiny = zooming & (width <= xtol * jnp.maximum(lo.alpha, hi.alpha))
        # In low precision the ends may be adjacent floats: nothing new to try.
        tiny |= zooming & ((nxt == lo.alpha) | (nxt == hi.alpha))
        # At max_learning_rate with sufficient decrease and a negative slope
        # there is no larger allowed step: accept it.
        converged = (armijo & curvature) | (~c.zooming & at_max & ~too_high)
        return _Carry(
            alpha=nxt,
            zooming=zooming,
            prev=p,
            lo=lo,
            hi=hi,
            width=jnp.where(zooming, width, c.width),
            width1=jnp.where(zooming, c.width, c.width1),
            track=_common.advance(c.track, p, converged, tiny),
        )

    return _common.iterate(prob, init, body, max_steps)


def zoom(
    *,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    max_linesearch_steps: int = 20,
    max_learning_rate: float | None = None,
    stepsize_precision: float = 1e-10,
    initial_step: float = 1.0,
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Scale the direction by a step satisfying the strong Wolfe conditions.

    Finds a step :math:`a` with

    .. math::
        \phi(a) \le \phi(0) + c_1 a \phi'(0), \qquad
        |\phi'(a)| \le c_2 |\phi'(0)|,

    where :math:`\phi(a) = f(x + a d)`, in two phases (Nocedal and Wright,
    algorithms 3.5 and 3.6): from ``initial_step`` it extrapolates (cubic,
    safeguarded to 1.1-4 times the last increase) until a step is too high,
    not lower than the previous one, or has a non-negative slope; it then
    zooms into the bracket with safeguarded cubic interpolation (quadratic,
    then bisection, when the cubic is unusable). Use it for L-BFGS and
    BFGS; it is the algorithm of ``optax.scale_by_zoom_linesearch`` and of
    SciPy's ``line_search_wolfe2``, written here with a status, aux values
    and the safeguards below.

    A direction that is not a descent direction is replaced by the negative
    gradient (status ``NOT_DESCENT``); a non-finite trial closes the bracket
    and is bisected away from; if no step meets the conditions within
    ``max_linesearch_steps`` evaluations, the lowest finite point seen is
    taken if it decreased the loss, else the zero step.

    Args:
        slope_rtol: sufficient-decrease constant :math:`c_1`.
        curv_rtol: curvature constant :math:`c_2`, ``slope_rtol <= curv_rtol
            < 1``; 0.9 for quasi-Newton directions, 0.1 for conjugate gradients.
        max_linesearch_steps: the most evaluations (value and gradient) per
            search.
        max_learning_rate: upper bound on the step; None for none.
        stepsize_precision: relative width of the zoom interval below which
            the search stops with ``STEP_TOO_SMALL`` and the best point.
        initial_step: the first trial step of every search (1 for L-BFGS).
        has_aux: whether ``value_fn`` returns ``(value, aux)``.

    Returns:
        The transform, with state :class:`ZoomState`; call its ``update``
        as :mod:`nnxopt.linesearch` describes.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from nnxopt.linesearch import zoom
        >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
        >>> x = jnp.zeros(2)
        >>> opt = optax.lbfgs(linesearch=zoom())
        >>> state = opt.init(x)
        >>> for _ in range(3):
        ...     v, g = optax.value_and_grad_from_state(f)(x, state=state)
        ...     u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
        ...     x = optax.apply_updates(x, u)
        >>> x.round(4).tolist()
        [3.0, 3.0]

    References:
        J. Nocedal and S. J. Wright, *Numerical Optimization*, 2nd ed.,
        Springer, 2006: algorithms 3.5 and 3.6, eq. (3.59).
    """
    cfg = _settings.check_settings(
        _CALL, slope_rtol, curv_rtol, max_linesearch_steps, max_learning_rate,
        stepsize_precision, initial_step, has_aux,
    )  # fmt: skip
    return _common.transform(_CALL, cfg, ZoomState, functools.partial(_search, cfg=cfg))
