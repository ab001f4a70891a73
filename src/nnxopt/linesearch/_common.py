"""Shared machinery of the line searches: state fields, the descent check with
its negative-gradient fallback, and evaluation of trial points (the argument
checks are in ``_settings``).

Every search is a one-dimensional search over the step ``alpha`` along a
direction ``d``: ``phi(alpha) = f(params + alpha * d)``. The module-level
``run_search`` does everything that is not specific to one algorithm, so that
each algorithm file only holds its own loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._memory import placed_zeros, vdot
from .._status import SearchStatus
from .._tree import choose
from ._settings import Settings

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
    # choose, not select: with a parameter-sized gradient, a conditional hands
    # on the chosen point's buffers instead of reading all three.
    chosen = choose(converged, point, choose(decreased, best, start))
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


def _descent_direction(
    grad: Any, updates: Any, dtype: jnp.dtype
) -> tuple[Any, jax.Array, jax.Array]:
    """Return ``(direction, slope, not_descent)``: ``updates`` if it descends,
    else the negative gradient scaled to its length (a usable search either
    way: the caller's direction may point uphill or hold nan)."""
    slope = vdot(grad, updates, dtype)
    gnorm2 = vdot(grad, grad, dtype)
    # `slope < 0` is False for nan as well: both fall back.
    not_descent = ~(slope < 0)
    # The fallback keeps the length of the direction the caller gave (its
    # scale is the caller's best guess of a good step), when it has one.
    dnorm = jnp.sqrt(vdot(updates, updates, dtype))
    gnorm = jnp.sqrt(gnorm2)
    usable = jnp.isfinite(dnorm) & (dnorm > 0) & (gnorm > 0)
    scale = jnp.where(usable, dnorm / jnp.where(usable, gnorm, 1), 1)
    direction = jax.tree.map(
        lambda u, g: jnp.where(not_descent, -scale * g, u).astype(u.dtype),
        updates,
        grad,
    )
    slope = jnp.where(not_descent, -scale * gnorm2, slope)
    return direction, slope, not_descent


def _evaluators(
    params: Any,
    direction: Any,
    value_fn: Callable[..., Any],
    has_aux: bool,
    dtype: jnp.dtype,
) -> tuple[Callable[[jax.Array], Point], Callable[[jax.Array], tuple]]:
    """Return ``(evaluate, evaluate_value)`` of :class:`Problem` along
    ``direction``: the algorithms see only the step ``alpha``."""

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
        return Point(alpha, v, vdot(g, direction, dtype), g, a)

    def evaluate_value(alpha: jax.Array) -> tuple[jax.Array, Any]:
        out = value_fn(point_at(alpha))
        v, a = out if has_aux else (out, None)
        return jnp.asarray(v, dtype), a

    return evaluate, evaluate_value


def _start_aux(
    state: Any, aux: Any, value_fn: Callable[..., Any], params: Any, has_aux: bool
) -> Any:
    """The aux of the start point (resolved at trace time): given, else the
    previous state's when it has the right structure, else zeros; None
    without ``has_aux``. The zero step returns it, so it must be well-typed."""
    if not has_aux:
        return None
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
    return jax.tree.map(lambda a, s: jnp.asarray(a, s.dtype), aux0, shape)


def _final_status(
    status: jax.Array,
    predicted: jax.Array,
    f0: jax.Array,
    slope: jax.Array,
    not_descent: jax.Array,
    dtype: jnp.dtype,
) -> jax.Array:
    """The status reported for the algorithm's ``status``: ``AT_ROUNDOFF``,
    ``NOT_DESCENT`` and ``NON_FINITE`` are decided here, from the start point
    and the first-order change ``predicted`` for the first trial step."""
    # No decrease found, where none can be resolved: the loss's round-off.
    eps = jnp.finfo(dtype).eps
    flat = jnp.abs(predicted) <= ROUNDOFF_ULPS * eps * jnp.abs(f0)
    status = jnp.where(
        (status == SearchStatus.LINESEARCH_FAILED) & flat,
        _INT(SearchStatus.AT_ROUNDOFF),
        status,
    )
    status = jnp.where(not_descent, _INT(SearchStatus.NOT_DESCENT), status)
    # A nan gradient or loss at the start leaves nothing to search along.
    return jnp.where(
        jnp.isfinite(f0) & jnp.isfinite(slope), status, _INT(SearchStatus.NON_FINITE)
    )


def _accepted(
    out: Outcome,
    direction: Any,
    f0: jax.Array,
    slope: jax.Array,
    slope_rtol: float,
    curv_rtol: float | None,
    strong: bool,
    dtype: jnp.dtype,
) -> tuple[Any, jax.Array, LineSearchInfo]:
    """Return ``(updates, learning_rate, info)`` of the accepted step: the
    scaled direction (zero for the zero step) and how far the Wolfe
    conditions are from holding there."""
    p = out.point
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
    return new_updates, jnp.where(moved, alpha, 0).astype(dtype), info


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
    direction, slope, not_descent = _descent_direction(grad, updates, dtype)
    can_search = jnp.isfinite(f0) & jnp.isfinite(slope) & (slope < 0)
    evaluate, evaluate_value = _evaluators(params, direction, value_fn, has_aux, dtype)
    aux0 = _start_aux(state, aux, value_fn, params, has_aux)
    start = Point(jnp.zeros((), dtype), f0, slope, grad, aux0)
    alpha0 = jnp.minimum(jnp.asarray(initial_step, dtype), max_learning_rate)
    out = algorithm(Problem(start, alpha0, can_search, evaluate, evaluate_value))
    status = _final_status(out.status, alpha0 * slope, f0, slope, not_descent, dtype)
    new_updates, learning_rate, info = _accepted(
        out, direction, f0, slope, slope_rtol, curv_rtol, strong, dtype
    )
    fields = dict(
        learning_rate=learning_rate,
        value=jnp.asarray(out.point.value, dtype),
        grad=out.point.grad,
        status=status,
        aux=out.point.aux,
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
