"""The Hager–Zhang (CG_DESCENT) line search as an optax transform."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import _common, _settings
from ._common import LineSearchInfo, Outcome, Point, Problem

_CALL = "nnxopt.linesearch.hager_zhang"
_INT = jnp.int32

# What the point being evaluated is for. The paper's procedures (bracket,
# secant², update, the bisection loop U3) call each other; a flat state
# machine with one evaluation per loop iteration keeps it a single
# lax.while_loop.
_BRACKET, _SEC1, _SEC2, _MID, _BISECT = 0, 1, 2, 3, 4


class HagerZhangState(NamedTuple):
    """State of :func:`hager_zhang`.

    Attributes:
        learning_rate: the accepted step (0 for the zero step).
        value: the loss at the accepted point (``inf`` after ``init``).
        grad: the gradient at the accepted point (zeros after ``init``).
        status: ``int32`` code of :class:`nnxopt.linesearch.SearchStatus`.
        aux: the aux of the accepted point when ``has_aux``, else None.
        info: a :class:`LineSearchInfo`.
        value_average: :math:`C_k`, the decayed average of ``|f|`` over the
            searches so far; the approximate-Wolfe tolerance is
            ``epsilon * value_average``.
        value_weight: :math:`Q_k`, the weight of that average.

    Example:
        The running average of ``|f|`` starts empty (``C_0 = Q_0 = 0``):

        >>> import jax.numpy as jnp
        >>> from nnxopt import linesearch
        >>> state = linesearch.hager_zhang().init(jnp.zeros(3))
        >>> float(state.value_average), float(state.value_weight)
        (0.0, 0.0)
    """

    learning_rate: jax.Array
    value: jax.Array
    grad: Any
    status: jax.Array
    aux: Any
    info: LineSearchInfo
    value_average: jax.Array
    value_weight: jax.Array


class _Carry(NamedTuple):
    c: jax.Array  # the next trial
    mode: jax.Array
    caller: jax.Array  # who started the bisection loop U3
    a: tuple  # (alpha, value, slope): left end, phi' < 0, phi <= phi(0) + eps
    b: tuple  # right end: phi' >= 0, or too high, or non-finite
    old_a: tuple  # the interval secant² started from (for its steps S2/S3)
    old_b: tuple
    c_sec: jax.Array  # the step S1 of secant² tried
    width: jax.Array  # b - a when secant² started
    track: _common.Track


def default_epsilon(dtype: Any) -> float:
    r"""Return the default relative tolerance of the approximate Wolfe value test.

    ``1e-6`` (CG_DESCENT's value) for float64; ``1e-3`` for float32 and lower
    precisions. :math:`\epsilon_k` must exceed the rounding noise of the loss,
    or the value test rejects steps whose slopes show a decrease: a float32
    PINN loss near 5e-6 measured 4e-4 relative noise (its residual subtracts
    two terms of size 10 to leave 2e-3), so with ``1e-6`` (or ``1e-4``) its
    searches failed hundreds of times in a row and the solve stalled.
    """
    return 1e-6 if jnp.finfo(dtype).eps < 1e-10 else 1e-3


def _secant(a, b):
    return (a[0] * b[2] - b[0] * a[2]) / (b[2] - a[2])


def _interior(t, a, b):
    return jnp.isfinite(t) & (t > a[0]) & (t < b[0])


def _new_outer(a, b):
    """Start secant² on ``[a, b]``: ``(c, mode, c_sec, width, old_a, old_b)``.

    A secant step outside (a, b) would make its update a no-op, after which
    the interval did not shrink: bisect at once instead.
    """
    t = _secant(a, b)
    ok = _interior(t, a, b)
    return (
        jnp.where(ok, t, a[0] + 0.5 * (b[0] - a[0])),
        jnp.where(ok, _INT(_SEC1), _INT(_MID)),
        t,
        b[0] - a[0],
        a,
        b,
    )


def _accepts(k: _Carry, pt: tuple, start: Point, cfg: dict, eps: jax.Array):
    """Termination: original Wolfe (T1), approximate Wolfe (T2), or the
    largest step allowed with sufficient decrease while bracketing."""
    t, f, g = pt
    f0, g0 = start.value, start.slope
    delta, sigma, amax = cfg["delta"], cfg["sigma"], cfg["amax"]
    curv = g >= sigma * g0
    wolfe = (f - f0 <= delta * t * g0) & curv
    approx = ((2.0 * delta - 1.0) * g0 >= g) & curv & (f <= f0 + eps)
    at_max = (k.mode == _BRACKET) & (t >= amax) & (g < 0)
    at_max &= f - f0 <= delta * t * g0
    return wolfe | approx | at_max


def _after_update(k: _Carry, a: tuple, b: tuple, caller: jax.Array, gamma: float):
    """Where to go once an update finished, by who called it: secant²'s
    second step (S2/S3), a bisection (L2), or a new secant² (L1).

    Returns ``(c, mode, c_sec, width, old_a, old_b)`` for the next trial.
    """
    o_c, o_mode, o_sec, o_width, o_a, o_b = _new_outer(a, b)
    # secant² steps S2/S3: if the update moved an end onto c, take a
    # secant through the old and the new end.
    on_b = k.c_sec == b[0]
    on_a = k.c_sec == a[0]
    cbar = jnp.where(
        on_b, _secant(k.old_b, b), jnp.where(on_a, _secant(k.old_a, a), jnp.nan)
    )
    sec2 = (caller == _SEC1) & (on_a | on_b) & _interior(cbar, a, b)
    # L2: bisect when secant² did not shrink the interval by gamma.
    mid = (b[0] - a[0]) > gamma * k.width
    after_sec = (caller == _SEC1) | (caller == _SEC2)
    d_c = jnp.where(
        sec2,
        cbar,
        jnp.where(after_sec & mid, a[0] + 0.5 * (b[0] - a[0]), o_c),
    )
    d_mode = jnp.where(
        sec2, _INT(_SEC2), jnp.where(after_sec & mid, _INT(_MID), o_mode)
    )
    outer = ~sec2 & ~(after_sec & mid)
    d_width = jnp.where(outer, o_width, k.width)
    d_sec = jnp.where(outer, o_sec, k.c_sec)
    d_old_a = jax.tree.map(lambda u, v: jnp.where(outer, u, v), o_a, k.old_a)
    d_old_b = jax.tree.map(lambda u, v: jnp.where(outer, u, v), o_b, k.old_b)
    return d_c, d_mode, d_sec, d_width, d_old_a, d_old_b


def _step(prob: Problem, cfg: dict, eps: jax.Array, k: _Carry) -> _Carry:
    """One evaluation of the state machine: test, update the interval, and
    choose the next trial and what it is for."""
    f0 = prob.start.value
    p = prob.evaluate(k.c)
    fin = _common.is_finite_point(p)
    f, g, t = p.value, p.slope, p.alpha
    pt = (t, f, g)
    converged = fin & _accepts(k, pt, prob.start, cfg, eps)

    # The update step (U1-U3) and the bracket step (B1-B3) share the
    # same three outcomes.
    rising = fin & (g >= 0)
    low = fin & ~rising & (f <= f0 + eps)
    # Otherwise the point is too high, or not finite: it becomes b.
    a = jax.tree.map(lambda u, v: jnp.where(low, u, v), pt, k.a)
    b = jax.tree.map(lambda u, v: jnp.where(low, v, u), pt, k.b)
    finished = rising | ((k.mode != _BISECT) & (k.mode != _BRACKET) & low)
    caller = jnp.where(k.mode == _BISECT, k.caller, k.mode)
    bisect_c = (1.0 - cfg["theta"]) * a[0] + cfg["theta"] * b[0]
    d_c, d_mode, d_sec, d_width, d_old_a, d_old_b = _after_update(
        k, a, b, caller, cfg["gamma"]
    )

    # Bracket expansion (B3): the whole step was low and still descending.
    expand = (k.mode == _BRACKET) & low
    nc = jnp.where(
        expand,
        jnp.minimum(cfg["rho"] * t, cfg["amax"]),
        jnp.where(finished, d_c, bisect_c),
    )
    mode = jnp.where(
        expand,
        _INT(_BRACKET),
        jnp.where(finished, d_mode, _INT(_BISECT)),
    )
    bracketed = mode != _BRACKET
    tiny = bracketed & (b[0] - a[0] <= cfg["xtol"] * b[0])
    # In low precision the ends may be adjacent floats: nothing new to try.
    tiny |= bracketed & ((nc <= a[0]) | (nc >= b[0]))
    return _Carry(
        c=nc,
        mode=mode,
        caller=jnp.where(finished | expand, k.caller, caller),
        a=a,
        b=b,
        old_a=jax.tree.map(lambda u, v: jnp.where(finished, u, v), d_old_a, k.old_a),
        old_b=jax.tree.map(lambda u, v: jnp.where(finished, u, v), d_old_b, k.old_b),
        c_sec=jnp.where(finished, d_sec, k.c_sec),
        width=jnp.where(finished, d_width, k.width),
        track=_common.advance(k.track, p, converged, tiny),
    )


def _search(prob: Problem, cfg: dict, eps: jax.Array) -> Outcome:
    start = prob.start
    zero = jnp.zeros_like(start.value)
    s0 = (zero, start.value, start.slope)
    init = _Carry(
        c=prob.alpha0,
        mode=_INT(_BRACKET),
        caller=_INT(_BRACKET),
        a=s0,
        b=s0,
        old_a=s0,
        old_b=s0,
        c_sec=zero,
        width=zero,
        track=_common.start_track(prob),
    )
    body = functools.partial(_step, prob, cfg, eps)
    return _common.iterate(prob, init, body, cfg["max_steps"])


def hager_zhang(
    *,
    slope_rtol: float = 0.1,
    curv_rtol: float = 0.9,
    max_linesearch_steps: int = 20,
    max_learning_rate: float | None = None,
    stepsize_precision: float = 1e-10,
    initial_step: float = 1.0,
    epsilon: float | None = None,
    theta: float = 0.5,
    gamma: float = 0.66,
    expansion_factor: float = 5.0,
    value_average_decay: float = 0.7,
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Scale the direction by a Hager–Zhang step (Wolfe or approximate Wolfe).

    Accepts a step :math:`a` satisfying either the Wolfe conditions

    .. math::
        \phi(a) - \phi(0) \le \delta a \phi'(0), \qquad \phi'(a) \ge \sigma \phi'(0),

    or the approximate Wolfe conditions

    .. math::
        (2\delta - 1)\phi'(0) \ge \phi'(a) \ge \sigma\phi'(0), \qquad
        \phi(a) \le \phi(0) + \epsilon_k,

    where :math:`\phi(a) = f(x + a d)` and :math:`\epsilon_k = \epsilon C_k`
    with :math:`C_k` a decayed average of :math:`|f|` over past searches
    (CG_DESCENT's update :math:`Q_{k+1} = 1 + \Delta Q_k`,
    :math:`C_{k+1} = C_k + (|f_{k+1}| - C_k)/Q_{k+1}`). The approximate
    conditions test a slope instead of a difference of values, so they stay
    meaningful when the decrease is below the rounding error of ``f``: this is
    the search to use in float32 and near a minimum. The step is found by
    bracketing (expansion by ``expansion_factor``), then the double secant
    step secant², with a bisection whenever an interval fails to shrink by
    ``gamma``; too-high points are bisected away from with weight ``theta``.

    The approximate conditions allow a step that raises the loss by at most
    :math:`\epsilon_k` (relative ``epsilon`` of the loss). A direction that is
    not a descent direction is replaced by the negative gradient (status
    ``NOT_DESCENT``); a non-finite trial is treated as a too-high point; if no
    step is accepted within ``max_linesearch_steps`` evaluations, the lowest
    finite point seen is taken if it decreased the loss, else the zero step.

    Args:
        slope_rtol: :math:`\delta`, in (0, 0.5).
        curv_rtol: :math:`\sigma`, ``slope_rtol <= curv_rtol < 1``.
        max_linesearch_steps: the most evaluations (value and gradient) per
            search.
        max_learning_rate: upper bound on the step; None for none.
        stepsize_precision: relative width of the bracketing interval below
            which the search stops with ``STEP_TOO_SMALL`` and the best point.
        initial_step: the first trial step of every search (1 for L-BFGS).
        epsilon: :math:`\epsilon`, relative tolerance of the value test of the
            approximate Wolfe conditions, >= 0.
        theta: bisection weight of the update step U3, in (0, 1).
        gamma: required shrink factor of the interval per secant², in (0, 1).
        expansion_factor: :math:`\rho`, growth of the step while bracketing, > 1.
        value_average_decay: :math:`\Delta`, decay of the average :math:`C_k`,
            in [0, 1]; 0 makes :math:`C_k = |f(x_k)|`.
        has_aux: whether ``value_fn`` returns ``(value, aux)``.

    Returns:
        The transform, with state :class:`HagerZhangState`; call its ``update``
        as :mod:`nnxopt.linesearch` describes.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.

    Example:
        As the search of ``nnxopt.lbfgs`` on a float32 problem; the state
        carries the average :math:`C_k` of ``|f|`` behind :math:`\epsilon_k`.

        >>> import jax.numpy as jnp, optax
        >>> import nnxopt
        >>> from nnxopt.linesearch import hager_zhang
        >>> f = lambda x: jnp.sum((x - 3.0) ** 2) + 1.0
        >>> x = jnp.zeros(2, jnp.float32)
        >>> opt = nnxopt.lbfgs(linesearch=hager_zhang())
        >>> state = opt.init(x)
        >>> for _ in range(3):
        ...     v, g = optax.value_and_grad_from_state(f)(x, state=state)
        ...     u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
        ...     x = optax.apply_updates(x, u)
        >>> x.round(4).tolist(), float(state.linesearch_state.value)
        ([3.0, 3.0], 1.0)
        >>> state.linesearch_state.value_average.dtype
        dtype('float32')

    References:
        W. W. Hager and H. Zhang, "A new conjugate gradient method with
        guaranteed descent and an efficient line search", SIAM J. Optim.
        16(1):170-192, 2005 (the line search, procedures bracket, update,
        secant²). W. W. Hager and H. Zhang, "Algorithm 851: CG_DESCENT, a
        conjugate gradient method with guaranteed descent", ACM Trans. Math.
        Software 32(1):113-137, 2006 (the update of :math:`\epsilon_k`).
    """
    common = _settings.check_settings(
        _CALL, slope_rtol, curv_rtol, max_linesearch_steps, max_learning_rate,
        stepsize_precision, initial_step, has_aux, slope_high=0.5,
        typical=(0.1, 0.9),
    )  # fmt: skip
    f = _settings.check_float
    cfg = dict(
        delta=common.slope_rtol,
        sigma=common.curv_rtol,
        amax=common.max_learning_rate,
        max_steps=common.max_steps,
        xtol=common.xtol,
        theta=f(_CALL, "theta", theta, low=0.0, high=1.0, hint="Typical: 0.5."),
        gamma=f(_CALL, "gamma", gamma, low=0.0, high=1.0, hint="Typical: 0.66."),
        rho=f(_CALL, "expansion_factor", expansion_factor, low=1.0, hint="Typical: 5.0."),
    )  # fmt: skip
    eps_rel = None
    if epsilon is not None:
        eps_rel = f(
            _CALL, "epsilon", epsilon, low=0.0, low_open=False,
            hint="Typical: 1e-6 (float64), 1e-3 (float32); None picks by dtype.",
        )  # fmt: skip
    decay = f(
        _CALL, "value_average_decay", value_average_decay, low=0.0, high=1.0,
        low_open=False, high_open=False, hint="Typical: 0.7.",
    )  # fmt: skip

    def init_extra(fields: dict[str, Any]) -> dict[str, Any]:
        zero = jnp.zeros_like(fields["value"], dtype=fields["learning_rate"].dtype)
        return dict(value_average=zero, value_weight=zero)

    def prepare(state: HagerZhangState, value: Any):
        dtype = state.value_average.dtype
        fk = jnp.abs(jnp.asarray(value, dtype))
        # A non-finite loss must not poison the average of later searches.
        fk_ok = jnp.isfinite(fk)
        weight = jnp.where(fk_ok, 1.0 + decay * state.value_weight, state.value_weight)
        average = jnp.where(
            fk_ok,
            state.value_average + (fk - state.value_average) / jnp.maximum(weight, 1.0),
            state.value_average,
        )
        rel = default_epsilon(dtype) if eps_rel is None else eps_rel
        eps = (rel * average).astype(dtype)

        def algorithm(prob: Problem) -> Outcome:
            return _search(prob, cfg, eps)

        return algorithm, dict(value_average=average, value_weight=weight)

    return _common.transform(
        _CALL, common, HagerZhangState, prepare=prepare, init_extra=init_extra,
        strong=False,
    )  # fmt: skip
