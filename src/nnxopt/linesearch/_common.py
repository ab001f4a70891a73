"""Shared machinery of the line searches: state fields, argument checks, the
descent check with its negative-gradient fallback, and evaluation of trial points.

Every search is a one-dimensional search over the step ``alpha`` along a
direction ``d``: ``phi(alpha) = f(params + alpha * d)``. The module-level
``run_search`` does everything that is not specific to one algorithm, so that
each algorithm file only holds its own loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._memory import placed_zeros
from .._status import SearchStatus

_INT = jnp.int32
#: A failed search is ``AT_ROUNDOFF`` when the first-order change the slope
#: predicts for the first trial step, ``|alpha0 phi'(0)|``, is at most this many
#: units of the loss's last place, ``eps |phi(0)|``: no decrease that small can
#: be resolved in the loss (a sum of n terms carries up to about ``n eps`` of
#: rounding error). A wrong gradient or a wall of non-finite values predicts a
#: decrease far above it and stays ``LINESEARCH_FAILED`` (measured on random
#: quadratics stopped by round-off: 0.03 to 11 ulps; the searches that fail on
#: them far from round-off: 290 to 1e8; the wrong gradient of the tests: 5e15).
ROUNDOFF_ULPS = 100.0


class LineSearchInfo(NamedTuple):
    """Diagnostics of the last line search (all searches share it).

    Attributes:
        num_linesearch_steps: trial steps tried by the last search (int32).
        num_value_evals: evaluations of the loss by the last search (int32),
            with or without a gradient (every forward pass).
        num_grad_evals: evaluations of the gradient by the last search (int32);
            equal to ``num_value_evals`` except for ``backtracking``, which
            evaluates the gradient once, at the accepted point.
        decrease_error: ``max(phi(a) - phi(0) - slope_rtol * a * phi'(0), 0)``
            at the accepted step ``a`` (zero when sufficient decrease holds).
        curvature_error: ``max(|phi'(a)| - curv_rtol * |phi'(0)|, 0)`` at the
            accepted step (zero when the strong Wolfe curvature condition holds);
            for ``hager_zhang`` the weak form ``max(curv_rtol * phi'(0) -
            phi'(a), 0)``; always zero for ``backtracking``, which has no
            curvature condition.

    Example:
        Every search's state holds one, ``state.info`` (one after a solve:
        ``docs/api/results.md``):

        >>> from nnxopt import linesearch
        >>> linesearch.LineSearchInfo._fields[:3]
        ('num_linesearch_steps', 'num_value_evals', 'num_grad_evals')
    """

    num_linesearch_steps: jax.Array
    num_value_evals: jax.Array
    num_grad_evals: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array


class LineSearchState(NamedTuple):
    """The fields every line-search state has (``zoom``, ``more_thuente`` and
    ``backtracking`` subclass it; ``hager_zhang`` adds two fields).

    Attributes:
        learning_rate: the accepted step (0 for the zero step).
        value: the loss at the accepted point (``inf`` after ``init``).
        grad: the gradient at the accepted point (zeros after ``init``).
        status: ``int32`` code of :class:`nnxopt.linesearch.SearchStatus`.
        aux: the aux of the accepted point when ``has_aux``, else None.
        info: a :class:`LineSearchInfo`.
    """

    learning_rate: jax.Array
    value: jax.Array
    grad: Any
    status: jax.Array
    aux: Any
    info: LineSearchInfo


class Point(NamedTuple):
    """One evaluated point of ``phi``: step, value, slope, gradient tree, aux."""

    alpha: jax.Array
    value: jax.Array
    slope: jax.Array
    grad: Any
    aux: Any


class Problem(NamedTuple):
    """What an algorithm sees: the start point and ways to evaluate trials.

    ``evaluate(alpha)`` returns a :class:`Point` (value and gradient);
    ``evaluate_value(alpha)`` returns ``(value, aux)`` without a gradient.
    ``can_search`` is False when there is no usable descent direction; the
    algorithms then make no evaluation.
    """

    start: Point
    alpha0: jax.Array
    can_search: jax.Array
    evaluate: Callable[[jax.Array], Point]
    evaluate_value: Callable[[jax.Array], tuple[jax.Array, Any]]


class Outcome(NamedTuple):
    """What an algorithm returns: the accepted point and counters.

    ``point.alpha == 0`` means the zero step (the start point).
    """

    point: Point
    status: jax.Array
    num_steps: jax.Array
    num_value_evals: jax.Array
    num_grad_evals: jax.Array


# --------------------------------------------------------------------------
# Argument checks (construction time, never inside jit).


def check_bool(call: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"{call}: `{name}` must be a bool, got {value!r} of type "
            f"{type(value).__name__}. Pass True or False."
        )


def check_int(call: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{call}: `{name}` must be a Python int, got {value!r} of type "
            f"{type(value).__name__}. Pass an int such as {max(minimum, 20)}."
        )
    if value < minimum:
        raise ValueError(
            f"{call}: `{name}` must be >= {minimum}, got {value!r}. "
            f"Pass an int of at least {minimum}."
        )


def check_float(
    call: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    high_open: bool = True,
    hint: str = "",
) -> float:
    """Check that ``value`` is a real number in the given interval; return it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{call}: `{name}` must be a Python float, got {value!r} of type "
            f"{type(value).__name__}. {hint}".rstrip()
        )
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise ValueError(
            f"{call}: `{name}` must be a finite float in {interval}, got "
            f"{value!r}. {hint}".rstrip()
        )
    return value


def check_rtols(
    call: str,
    slope_rtol: Any,
    curv_rtol: Any,
    *,
    slope_high: float = 1.0,
    typical: tuple[float, float] = (1e-4, 0.9),
) -> tuple[float, float]:
    """Check ``0 < slope_rtol <= curv_rtol < 1`` (the Wolfe constants).

    Equality is allowed: Moré and Thuente test with ``mu == eta``.
    ``slope_high`` is a tighter upper bound on ``slope_rtol`` (Hager–Zhang's
    ``delta < 0.5``).
    """
    c1 = check_float(
        call, "slope_rtol", slope_rtol, low=0.0, high=slope_high,
        hint=f"Typical: {typical[0]}.",
    )  # fmt: skip
    c2 = check_float(
        call, "curv_rtol", curv_rtol, low=0.0, high=1.0,
        hint=f"Typical: {typical[1]}.",
    )  # fmt: skip
    if not c1 <= c2:
        raise ValueError(
            f"{call}: `slope_rtol` must not exceed `curv_rtol` (otherwise "
            f"no step may satisfy both Wolfe conditions), got slope_rtol="
            f"{slope_rtol!r} and curv_rtol={curv_rtol!r}. Typical: slope_rtol="
            f"{typical[0]}, curv_rtol={typical[1]}."
        )
    return c1, c2


def check_max_learning_rate(call: str, value: Any) -> float:
    """Check ``max_learning_rate`` (None means no upper bound); return a float."""
    if value is None:
        return math.inf
    return check_float(
        call,
        "max_learning_rate",
        value,
        low=0.0,
        hint="Pass a positive float, or None for no bound.",
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """The checked arguments every search takes (``curv_rtol`` and ``xtol`` are
    None for ``backtracking``, which has neither)."""

    slope_rtol: float
    curv_rtol: float | None
    max_steps: int
    max_learning_rate: float
    xtol: float | None
    initial_step: float
    has_aux: bool


def check_settings(
    call: str,
    slope_rtol: Any,
    curv_rtol: Any,
    max_linesearch_steps: Any,
    max_learning_rate: Any,
    stepsize_precision: Any,
    initial_step: Any,
    has_aux: Any,
    *,
    slope_high: float = 1.0,
    typical: tuple[float, float] = (1e-4, 0.9),
) -> Settings:
    """Check the common arguments of a search (construction time).

    ``curv_rtol=None`` (``backtracking``) checks ``slope_rtol`` alone;
    ``stepsize_precision=None`` means the search has no interval tolerance.
    """
    if curv_rtol is None:
        c1 = check_float(
            call, "slope_rtol", slope_rtol, low=0.0, high=slope_high,
            hint=f"Typical: {typical[0]}.",
        )  # fmt: skip
        c2 = None
    else:
        c1, c2 = check_rtols(
            call, slope_rtol, curv_rtol, slope_high=slope_high, typical=typical
        )
    check_int(call, "max_linesearch_steps", max_linesearch_steps, 1)
    amax = check_max_learning_rate(call, max_learning_rate)
    xtol = None
    if stepsize_precision is not None:
        xtol = check_float(
            call, "stepsize_precision", stepsize_precision, low=0.0,
            low_open=False, hint="Typical: 1e-10.",
        )  # fmt: skip
    step0 = check_float(
        call, "initial_step", initial_step, low=0.0, hint="Typical: 1.0."
    )
    check_bool(call, "has_aux", has_aux)
    return Settings(c1, c2, max_linesearch_steps, amax, xtol, step0, has_aux)


# --------------------------------------------------------------------------
# Small jit-safe helpers shared by the algorithms.


def select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """``jnp.where`` over two pytrees of the same structure (scalar predicate)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def is_finite_point(p: Point) -> jax.Array:
    return jnp.isfinite(p.value) & jnp.isfinite(p.slope)


def keep_best(best: Point, trial: Point) -> Point:
    """Return the point with the lower finite value (``best`` on ties)."""
    better = is_finite_point(trial) & (trial.value < best.value)
    return select(better, trial, best)


def conclude(
    converged: jax.Array,
    point: Point,
    best: Point,
    start: Point,
    stopped: jax.Array | int,
) -> tuple[Point, jax.Array]:
    """Choose the returned point and status once an algorithm has stopped.

    ``point`` if the conditions hold; otherwise the best point seen if it
    decreased the loss (with status ``stopped``); otherwise the zero step, as
    ``NON_FINITE`` when no finite trial value was ever seen (``best`` is the
    start and ``point`` non-finite) or ``LINESEARCH_FAILED``.
    """
    decreased = best.value < start.value
    status = jnp.where(
        converged,
        _INT(SearchStatus.SUCCESS),
        jnp.where(
            decreased,
            jnp.asarray(stopped, _INT),
            jnp.where(
                is_finite_point(point),
                _INT(SearchStatus.LINESEARCH_FAILED),
                _INT(SearchStatus.NON_FINITE),
            ),
        ),
    )
    chosen = select(converged, point, select(decreased, best, start))
    return chosen, status


class Track(NamedTuple):
    """The bookkeeping every bracketing search carries through its loop.

    ``last`` is the latest trial, ``best`` the lowest finite one; ``stopped``
    is the status given when the loop ends without convergence.
    """

    last: Point
    best: Point
    done: jax.Array
    converged: jax.Array
    stopped: jax.Array
    n: jax.Array


def start_track(prob: Problem) -> Track:
    """The track before the first trial (done at once without a direction)."""
    return Track(
        last=prob.start,
        best=prob.start,
        done=~prob.can_search,
        converged=jnp.asarray(False),
        stopped=_INT(SearchStatus.MAX_LINESEARCH_STEPS),
        n=_INT(0),
    )


def advance(track: Track, p: Point, converged: jax.Array, stuck: jax.Array) -> Track:
    """Record the trial ``p``: ``converged`` ends the search with it;
    ``stuck`` (nothing new to try) ends it with ``STEP_TOO_SMALL``."""
    return Track(
        last=p,
        best=keep_best(track.best, p),
        done=converged | stuck,
        converged=converged,
        stopped=jnp.where(
            stuck & ~converged, _INT(SearchStatus.STEP_TOO_SMALL), track.stopped
        ),
        n=track.n + 1,
    )


def iterate(
    prob: Problem, init: Any, body: Callable[[Any], Any], max_steps: int
) -> Outcome:
    """Run ``body`` (one evaluation each) on a carry with a ``track`` field
    until the track is done or ``max_steps`` trials were made; conclude."""

    def cond(c: Any) -> jax.Array:
        return ~c.track.done & (c.track.n < max_steps)

    t = jax.lax.while_loop(cond, body, init).track
    point, status = conclude(t.converged, t.last, t.best, prob.start, t.stopped)
    return Outcome(point, status, t.n, t.n, t.n)


def _leaf_dtype(params: Any) -> jnp.dtype:
    leaves = jax.tree.leaves(params)
    if not leaves:
        return jnp.dtype(jnp.float32)
    return jnp.result_type(*leaves)


def _vdot(a: Any, b: Any, dtype: jnp.dtype) -> jax.Array:
    return jnp.asarray(optax.tree.vdot(a, b), dtype).real


def init_fields(params: Any) -> dict[str, Any]:
    """Initial values of the fields every line-search state has."""
    dtype = _leaf_dtype(params)
    zero = jnp.zeros((), dtype)
    return dict(
        learning_rate=jnp.ones((), dtype),
        # inf so that optax.value_and_grad_from_state evaluates on step one.
        value=jnp.asarray(jnp.inf, dtype),
        # placed like the parameters (sharded ones stay sharded from init on)
        grad=placed_zeros(params),
        status=_INT(SearchStatus.SUCCESS),
        aux=None,
        info=LineSearchInfo(_INT(0), _INT(0), _INT(0), zero, zero),
    )


def missing_names(value: Any, grad: Any, value_fn: Any) -> list[str]:
    """The names of the extra arguments of a search's ``update`` that are None."""
    return [
        n
        for n, v in (("value", value), ("grad", grad), ("value_fn", value_fn))
        if v is None
    ]


def missing_args_error(call: str, value: Any, grad: Any, value_fn: Any) -> None:
    """Explain a missing extra argument in our words, at trace time."""
    missing = missing_names(value, grad, value_fn)
    if missing:
        raise TypeError(
            f"{call}(...).update: missing keyword argument(s) "
            f"{', '.join(repr(m) for m in missing)}. A line search evaluates "
            "the loss along the direction, so call it as update(updates, "
            "state, params, value=loss, grad=grad, value_fn=loss_fn); inside "
            "optax.chain or optax.lbfgs pass the same keywords to the "
            "chain's update (use optax.value_and_grad_from_state to reuse "
            "the value and gradient the search stored)."
        )


def run_search(
    call: str,
    algorithm: Callable[[Problem], Outcome],
    updates: Any,
    state: Any,
    params: Any,
    *,
    value: Any,
    grad: Any,
    value_fn: Callable[..., Any],
    aux: Any,
    has_aux: bool,
    initial_step: float,
    max_learning_rate: float,
    slope_rtol: float,
    curv_rtol: float | None,
    strong: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Check the direction, run ``algorithm`` and build the new state's fields.

    Returns the scaled updates and a dict of the common state fields.
    """
    dtype = _leaf_dtype(params)
    f0 = jnp.asarray(value, dtype)

    slope = _vdot(grad, updates, dtype)
    gnorm2 = _vdot(grad, grad, dtype)
    # `slope < 0` is False for nan as well: both fall back.
    not_descent = ~(slope < 0)
    # The fallback keeps the length of the direction the caller gave (its
    # scale is the caller's best guess of a good step), when it has one.
    dnorm = jnp.sqrt(_vdot(updates, updates, dtype))
    gnorm = jnp.sqrt(gnorm2)
    usable = jnp.isfinite(dnorm) & (dnorm > 0) & (gnorm > 0)
    scale = jnp.where(usable, dnorm / jnp.where(usable, gnorm, 1), 1)
    direction = jax.tree.map(
        lambda u, g: jnp.where(not_descent, -scale * g, u).astype(u.dtype),
        updates,
        grad,
    )
    slope = jnp.where(not_descent, -scale * gnorm2, slope)
    can_search = jnp.isfinite(f0) & jnp.isfinite(slope) & (slope < 0)

    def point_at(alpha: jax.Array) -> Any:
        return jax.tree.map(
            lambda p, d: (p + alpha.astype(p.dtype) * d).astype(p.dtype),
            params,
            direction,
        )

    def evaluate(alpha: jax.Array) -> Point:
        x = point_at(alpha)
        if has_aux:
            (v, a), g = jax.value_and_grad(value_fn, has_aux=True)(x)
        else:
            v, g = jax.value_and_grad(value_fn)(x)
            a = None
        v = jnp.asarray(v, dtype)
        return Point(alpha, v, _vdot(g, direction, dtype), g, a)

    def evaluate_value(alpha: jax.Array) -> tuple[jax.Array, Any]:
        out = value_fn(point_at(alpha))
        v, a = out if has_aux else (out, None)
        return jnp.asarray(v, dtype), a

    # The aux of the start point: given, else the previous state's (when it
    # has the right structure), else zeros. Resolved at trace time.
    aux0 = None
    if has_aux:
        shape = jax.eval_shape(value_fn, params)[1]
        if aux is not None:
            aux0 = aux
        elif jax.tree.structure(state.aux) == jax.tree.structure(shape) and all(
            jnp.shape(a) == s.shape
            for a, s in zip(jax.tree.leaves(state.aux), jax.tree.leaves(shape))
        ):
            aux0 = state.aux
        else:
            aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
        aux0 = jax.tree.map(lambda a, s: jnp.asarray(a, s.dtype), aux0, shape)

    start = Point(jnp.zeros((), dtype), f0, slope, grad, aux0)
    alpha0 = jnp.minimum(jnp.asarray(initial_step, dtype), max_learning_rate)
    out = algorithm(Problem(start, alpha0, can_search, evaluate, evaluate_value))

    p = out.point
    status = out.status
    # No decrease found, where none can be resolved: the loss's round-off.
    eps = jnp.finfo(dtype).eps
    flat = jnp.abs(alpha0 * slope) <= ROUNDOFF_ULPS * eps * jnp.abs(f0)
    status = jnp.where(
        (status == SearchStatus.LINESEARCH_FAILED) & flat,
        _INT(SearchStatus.AT_ROUNDOFF),
        status,
    )
    status = jnp.where(not_descent, _INT(SearchStatus.NOT_DESCENT), status)
    # A nan gradient or loss at the start leaves nothing to search along.
    status = jnp.where(
        jnp.isfinite(f0) & jnp.isfinite(slope), status, _INT(SearchStatus.NON_FINITE)
    )
    alpha = jnp.where(p.alpha > 0, p.alpha, 0).astype(dtype)
    new_updates = jax.tree.map(
        lambda d: (alpha.astype(d.dtype) * d).astype(d.dtype), direction
    )
    moved = alpha > 0
    decrease_error = jnp.where(
        moved, jnp.maximum(p.value - f0 - slope_rtol * alpha * slope, 0), 0
    )
    if curv_rtol is None:
        curvature_error = jnp.zeros((), dtype)
    else:
        # Strong: |phi'(a)| <= c2 |phi'(0)|; weak: phi'(a) >= c2 phi'(0).
        excess = jnp.abs(p.slope) if strong else -p.slope
        curvature_error = jnp.where(
            moved, jnp.maximum(excess - curv_rtol * jnp.abs(slope), 0), 0
        )
    info = LineSearchInfo(
        num_linesearch_steps=jnp.asarray(out.num_steps, _INT),
        num_value_evals=jnp.asarray(out.num_value_evals, _INT),
        num_grad_evals=jnp.asarray(out.num_grad_evals, _INT),
        decrease_error=decrease_error.astype(dtype),
        curvature_error=curvature_error.astype(dtype),
    )
    fields = dict(
        learning_rate=jnp.where(moved, alpha, 0).astype(dtype),
        value=jnp.asarray(p.value, dtype),
        grad=p.grad,
        status=status,
        aux=p.aux,
        info=info,
    )
    return new_updates, fields


def transform(
    call: str,
    settings: Settings,
    make_state: Callable[..., Any],
    algorithm: Callable[[Problem], Outcome] | None = None,
    *,
    prepare: Callable[[Any, Any], tuple[Callable[[Problem], Outcome], dict]]
    | None = None,
    init_extra: Callable[[dict[str, Any]], dict[str, Any]] = lambda fields: {},
    strong: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Build the optax transform of a search.

    Either ``algorithm`` (the same for every search) or
    ``prepare(state, value)``, which returns the algorithm of this search and
    the extra state fields it updates (``hager_zhang``'s value average);
    ``init_extra(fields)`` gives their initial values; ``make_state(**fields)``
    builds the search's state.
    """
    if prepare is None:
        assert algorithm is not None

        def prepare(state: Any, value: Any) -> tuple[Any, dict]:
            return algorithm, {}

    def init_fn(params: Any) -> Any:
        fields = init_fields(params)
        return make_state(**fields, **init_extra(fields))

    def update_fn(
        updates, state, params=None, *, value=None, grad=None, value_fn=None,
        aux=None, **extra_args,
    ):  # fmt: skip
        del extra_args
        missing_args_error(call, value, grad, value_fn)
        algorithm, extra = prepare(state, value)
        new_updates, fields = run_search(
            call, algorithm, updates, state, params,
            value=value, grad=grad, value_fn=value_fn, aux=aux,
            has_aux=settings.has_aux, initial_step=settings.initial_step,
            max_learning_rate=settings.max_learning_rate,
            slope_rtol=settings.slope_rtol, curv_rtol=settings.curv_rtol,
            strong=strong,
        )  # fmt: skip
        return new_updates, make_state(**fields, **extra)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
