"""The Moré–Thuente line search (MINPACK-2 ``dcsrch``/``dcstep``) as an optax transform."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import _common, _settings
from ._common import Outcome, Problem

_CALL = "nnxopt.linesearch.more_thuente"
_INT = jnp.int32
# The constants of MINPACK-2's dcsrch: bisect when the bracket did not shrink
# by 0.66 over two steps; extrapolate to [1.1, 4] times the last step.
_P5, _P66, _XTRAPL, _XTRAPU = 0.5, 0.66, 1.1, 4.0


class MoreThuenteState(_common.LineSearchState):
    """State of :func:`more_thuente`: the fields of every line-search state
    (``learning_rate``, ``value``, ``grad``, ``status``, ``aux``, ``info``).

    Example:
        Before the first search no trial step has been tried:

        >>> import jax.numpy as jnp
        >>> from nnxopt import linesearch
        >>> state = linesearch.more_thuente().init({"w": jnp.zeros(3)})
        >>> int(state.info.num_linesearch_steps), int(state.info.num_value_evals)
        (0, 0)
    """

    __slots__ = ()


def _gamma(theta, a, b, clamp=False):
    # Scaled to avoid overflow, as in dcstep.
    s = jnp.maximum(jnp.maximum(jnp.abs(theta), jnp.abs(a)), jnp.abs(b))
    disc = (theta / s) ** 2 - (a / s) * (b / s)
    if clamp:
        disc = jnp.maximum(0.0, disc)
    return s * jnp.sqrt(disc)


def dcstep(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    """One safeguarded step and interval update of Moré–Thuente (``dcstep``).

    All four cases of the paper are computed and one is selected, so that the
    function is branch-free under jit; the unselected cases may hold nan.

    Returns:
        ``(stx, fx, dx, sty, fy, dy, stp, brackt)`` after the update.
    """
    sgnd = jnp.sign(dp) * jnp.sign(dx)
    theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp

    # Case 1: higher value: the minimum is bracketed; cubic or its mean
    # with the quadratic, whichever is closer to stx.
    g1 = _gamma(theta, dx, dp)
    g1 = jnp.where(stp < stx, -g1, g1)
    r1 = ((g1 - dx) + theta) / (((g1 - dx) + g1) + dp)
    stpc1 = stx + r1 * (stp - stx)
    stpq1 = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
    stpf1 = jnp.where(
        jnp.abs(stpc1 - stx) <= jnp.abs(stpq1 - stx),
        stpc1,
        stpc1 + (stpq1 - stpc1) / 2.0,
    )

    # Case 2: derivatives of opposite sign: bracketed; the farther of the
    # cubic and secant steps from stp.
    g2 = _gamma(theta, dx, dp)
    g2 = jnp.where(stp > stx, -g2, g2)
    r2 = ((g2 - dp) + theta) / (((g2 - dp) + g2) + dx)
    stpc2 = stp + r2 * (stx - stp)
    stpq2 = stp + (dp / (dp - dx)) * (stx - stp)
    stpf2 = jnp.where(jnp.abs(stpc2 - stp) > jnp.abs(stpq2 - stp), stpc2, stpq2)

    # Case 3: same sign, derivative decreasing in magnitude: the cubic may
    # not have a minimizer in the right direction; fall back to the bounds.
    g3 = _gamma(theta, dx, dp, clamp=True)
    g3 = jnp.where(stp > stx, -g3, g3)
    r3 = ((g3 - dp) + theta) / ((g3 + (dx - dp)) + g3)
    stpc3 = jnp.where(
        (r3 < 0) & (g3 != 0),
        stp + r3 * (stx - stp),
        jnp.where(stp > stx, stpmax, stpmin),
    )
    stpq3 = stp + (dp / (dp - dx)) * (stx - stp)
    in_b = jnp.where(jnp.abs(stpc3 - stp) < jnp.abs(stpq3 - stp), stpc3, stpq3)
    limit = stp + 0.66 * (sty - stp)
    in_b = jnp.where(stp > stx, jnp.minimum(limit, in_b), jnp.maximum(limit, in_b))
    out_b = jnp.where(jnp.abs(stpc3 - stp) > jnp.abs(stpq3 - stp), stpc3, stpq3)
    out_b = jnp.minimum(jnp.maximum(out_b, stpmin), stpmax)
    stpf3 = jnp.where(brackt, in_b, out_b)

    # Case 4: same sign, derivative not decreasing: cubic through (stp, sty)
    # when bracketed, else go to the bound.
    theta4 = 3.0 * (fp - fy) / (sty - stp) + dy + dp
    g4 = _gamma(theta4, dy, dp)
    g4 = jnp.where(stp > sty, -g4, g4)
    r4 = ((g4 - dp) + theta4) / (((g4 - dp) + g4) + dy)
    stpc4 = stp + r4 * (sty - stp)
    stpf4 = jnp.where(brackt, stpc4, jnp.where(stp > stx, stpmax, stpmin))

    case1 = fp > fx
    case2 = ~case1 & (sgnd < 0)
    case3 = ~case1 & ~case2 & (jnp.abs(dp) < jnp.abs(dx))
    stpf = jnp.where(
        case1, stpf1, jnp.where(case2, stpf2, jnp.where(case3, stpf3, stpf4))
    )
    brackt = brackt | case1 | case2

    # Interval update: stx keeps the lowest value, sty the other end.
    to_y_from_x = ~case1 & (sgnd < 0)
    sty2 = jnp.where(case1, stp, jnp.where(to_y_from_x, stx, sty))
    fy2 = jnp.where(case1, fp, jnp.where(to_y_from_x, fx, fy))
    dy2 = jnp.where(case1, dp, jnp.where(to_y_from_x, dx, dy))
    stx2 = jnp.where(case1, stx, stp)
    fx2 = jnp.where(case1, fx, fp)
    dx2 = jnp.where(case1, dx, dp)
    return stx2, fx2, dx2, sty2, fy2, dy2, stpf, brackt


class _Carry(NamedTuple):
    stp: jax.Array
    stx: jax.Array
    fx: jax.Array
    gx: jax.Array
    sty: jax.Array
    fy: jax.Array
    gy: jax.Array
    stmin: jax.Array
    stmax: jax.Array
    width: jax.Array
    width1: jax.Array
    brackt: jax.Array
    stage2: jax.Array
    bad: jax.Array  # smallest step with a non-finite value or slope
    track: _common.Track


def _next_trial(
    c: _Carry,
    stp: jax.Array,
    f: jax.Array,
    g: jax.Array,
    ftest: jax.Array,
    stage2: jax.Array,
    gtest: jax.Array,
    xtol: float,
    stpmin: jax.Array,
    stpmax: jax.Array,
) -> tuple[_Carry, jax.Array]:
    """dcsrch's interval update and safeguards after a finite trial.

    Returns the carry with the new interval and next trial (``stage2`` and
    ``track`` are the caller's to set) and ``stuck`` (nothing new to try).
    """
    # Stage 1 works on psi(a) = phi(a) - phi(0) - ftol*a*phi'(0) until
    # a step with psi <= 0 and phi' >= 0 is found.
    use_psi = ~stage2 & (f <= c.fx) & (f > ftest)
    shift = jnp.where(use_psi, gtest, 0)
    stx, fxm, gxm, sty, fym, gym, nstp, brackt = dcstep(
        c.stx,
        c.fx - c.stx * shift,
        c.gx - shift,
        c.sty,
        c.fy - c.sty * shift,
        c.gy - shift,
        stp,
        f - stp * shift,
        g - shift,
        c.brackt,
        c.stmin,
        c.stmax,
    )
    fx, fy = fxm + stx * shift, fym + sty * shift
    gx, gy = gxm + shift, gym + shift

    width, width1 = c.width, c.width1
    bisect = brackt & (jnp.abs(sty - stx) >= _P66 * width1)
    nstp = jnp.where(bisect, stx + _P5 * (sty - stx), nstp)
    width1 = jnp.where(brackt, width, width1)
    width = jnp.where(brackt, jnp.abs(sty - stx), width)
    stmin = jnp.where(brackt, jnp.minimum(stx, sty), nstp + _XTRAPL * (nstp - stx))
    stmax = jnp.where(brackt, jnp.maximum(stx, sty), nstp + _XTRAPU * (nstp - stx))
    nstp = jnp.minimum(jnp.maximum(nstp, stpmin), stpmax)
    # Never return to where the loss was not finite.
    nstp = jnp.minimum(nstp, stx + _P5 * (c.bad - stx))
    # dcsrch would now evaluate stx again only to stop with a warning;
    # stop here instead (one evaluation less, same outcome).
    stuck = brackt & (
        (nstp <= stmin) | (nstp >= stmax) | (stmax - stmin <= xtol * stmax)
    )
    moved = c._replace(
        stp=nstp, stx=stx, fx=fx, gx=gx, sty=sty, fy=fy, gy=gy, stmin=stmin,
        stmax=stmax, width=width, width1=width1, brackt=brackt,
    )  # fmt: skip
    return moved, stuck


def _retreat(c: _Carry, p: _common.Point, xtol: float) -> _Carry:
    """After a non-finite trial: halve the step towards the best point and
    remember it as a barrier; the interval is left as it was."""
    stp = c.stp
    bad = jnp.minimum(c.bad, stp)
    shrunk = c.stx + _P5 * (stp - c.stx)
    tiny = jnp.abs(shrunk - c.stx) <= xtol * shrunk
    return c._replace(
        stp=shrunk,
        bad=bad,
        track=_common.advance(c.track, p, jnp.asarray(False), tiny),
    )


def _step(
    prob: Problem,
    cfg: _settings.Settings,
    gtest: jax.Array,
    stpmin: jax.Array,
    stpmax: jax.Array,
    c: _Carry,
) -> _Carry:
    """One evaluation of dcsrch: test the trial for convergence or a
    warning, then take the next trial from the updated interval."""
    finit, ginit = prob.start.value, prob.start.slope
    xtol = cfg.xtol
    assert xtol is not None  # more_thuente always has stepsize_precision
    stp = c.stp
    p = prob.evaluate(stp)
    f, g = p.value, p.slope
    finite = _common.is_finite_point(p)

    ftest = finit + stp * gtest
    stage2 = c.stage2 | ((f <= ftest) & (g >= 0))
    warn_round = c.brackt & ((stp <= c.stmin) | (stp >= c.stmax))
    warn_xtol = c.brackt & (c.stmax - c.stmin <= xtol * c.stmax)
    at_max = (stp == stpmax) & (f <= ftest) & (g <= gtest)
    conv = (f <= ftest) & (jnp.abs(g) <= cfg.curv_rtol * -ginit)
    # At max_learning_rate with sufficient decrease and a still negative
    # slope, no larger step is allowed: accept it, as dcsrch does.
    converged = finite & (conv | at_max)
    warned = finite & ~converged & (warn_round | warn_xtol)

    moved, stuck = _next_trial(c, stp, f, g, ftest, stage2, gtest, xtol, stpmin, stpmax)
    updated = moved._replace(
        stage2=stage2, track=_common.advance(c.track, p, converged, warned | stuck)
    )
    return _common.select(finite, updated, _retreat(c, p, xtol))


def _search(prob: Problem, cfg: _settings.Settings) -> Outcome:
    start = prob.start
    dtype = start.value.dtype
    finit, ginit = start.value, start.slope
    gtest = cfg.slope_rtol * ginit
    stpmin = jnp.zeros((), dtype)
    stpmax = jnp.asarray(cfg.max_learning_rate, dtype)
    stp0 = prob.alpha0
    zero = jnp.zeros((), dtype)
    width = stpmax - stpmin
    init = _Carry(
        stp=stp0,
        stx=zero,
        fx=finit,
        gx=ginit,
        sty=zero,
        fy=finit,
        gy=ginit,
        stmin=zero,
        stmax=stp0 + _XTRAPU * stp0,
        width=width,
        width1=width / _P5,
        brackt=jnp.asarray(False),
        stage2=jnp.asarray(False),
        bad=jnp.asarray(jnp.inf, dtype),
        track=_common.start_track(prob),
    )
    body = functools.partial(_step, prob, cfg, gtest, stpmin, stpmax)
    return _common.iterate(prob, init, body, cfg.max_steps)


def more_thuente(
    *,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    max_linesearch_steps: int = 20,
    max_learning_rate: float | None = None,
    stepsize_precision: float = 1e-10,
    initial_step: float = 1.0,
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Scale the direction by a Moré–Thuente step (strong Wolfe conditions).

    Finds a step :math:`a` with sufficient decrease and small curvature,

    .. math::
        \phi(a) \le \phi(0) + \mu a \phi'(0), \qquad
        |\phi'(a)| \le \eta |\phi'(0)|,

    where :math:`\phi(a) = f(x + a d)`, using the interval updates and
    safeguarded cubic/quadratic steps of Moré and Thuente (the MINPACK-2
    routines ``dcsrch``/``dcstep``). On the test functions of the paper it
    takes the same steps as SciPy's ``scipy.optimize._dcsrch.DCSRCH``.
    Use it as the default search of L-BFGS when values and gradients come
    together; it is the search of L-BFGS-B and of most quasi-Newton codes.

    Differences from ``dcsrch``: where ``dcsrch`` would evaluate the best point
    again only to stop with a rounding or ``xtol`` warning, this search stops
    at once with status ``STEP_TOO_SMALL`` and the best point seen; a trial
    with a non-finite value or slope halves the step towards the best point
    and is never exceeded again; a direction that is not a descent direction
    is replaced by the negative gradient (status ``NOT_DESCENT``).

    Args:
        slope_rtol: sufficient-decrease constant :math:`\mu` (``ftol``),
            ``0 < slope_rtol < curv_rtol``.
        curv_rtol: curvature constant :math:`\eta` (``gtol``), below 1. Use 0.9
            for quasi-Newton directions, 0.1 for nonlinear conjugate gradients.
        max_linesearch_steps: the most evaluations (value and gradient) per
            search.
        max_learning_rate: upper bound on the step (``stpmax``); None for none.
            The lower bound (``stpmin``) is 0.
        stepsize_precision: relative width of the bracketing interval below
            which the search stops (``xtol``).
        initial_step: the first trial step of every search (1 for L-BFGS).
        has_aux: whether ``value_fn`` returns ``(value, aux)``.

    Returns:
        The transform, with state :class:`MoreThuenteState`; call its ``update``
        as :mod:`nnxopt.linesearch` describes.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.

    Example:
        One search along the negative gradient of a quadratic: the unit
        step overshoots to a point as high as the start, and the next step
        lands next to the minimizer, 0.5.

        >>> import jax, jax.numpy as jnp
        >>> from nnxopt.linesearch import SearchStatus
        >>> from nnxopt.linesearch import more_thuente
        >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
        >>> x = jnp.zeros(2)
        >>> v, g = jax.value_and_grad(f)(x)
        >>> ls = more_thuente()
        >>> u, state = ls.update(-g, ls.init(x), x, value=v, grad=g, value_fn=f)
        >>> round(float(state.learning_rate), 3), SearchStatus(int(state.status)).name
        (0.5, 'SUCCESS')
        >>> int(state.info.num_value_evals)
        2

    References:
        J. J. Moré and D. J. Thuente, "Line search algorithms with guaranteed
        sufficient decrease", ACM Trans. Math. Software 20(3):286-307, 1994.
        MINPACK-2 routines ``dcsrch`` and ``dcstep`` (B. M. Averick,
        R. G. Carter, J. J. Moré, 1993).
    """
    cfg = _settings.check_settings(
        _CALL, slope_rtol, curv_rtol, max_linesearch_steps, max_learning_rate,
        stepsize_precision, initial_step, has_aux,
    )  # fmt: skip
    return _common.transform(
        _CALL, cfg, MoreThuenteState, functools.partial(_search, cfg=cfg)
    )
