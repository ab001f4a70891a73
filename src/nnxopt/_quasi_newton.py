"""What nnxopt's quasi-Newton transforms share (``lbfgs``, ``bfgs``, ``lbfgsb``).

- The ``update`` signature of a line-search transform, ``update(updates, state,
  params, *, value, grad, value_fn, **extra)``, checked at trace time.
- The test of the previous line search: a curvature memory (pairs or a dense
  ``H``) is discarded after a failed search or no step at all.
- The step at a finite point: the line search along the direction, a
  non-finite step made no step.
- The step back from a non-finite trial point: shrink towards the last finite
  iterate, and give up (reset, return there) after repeated failure.

The states of ``lbfgs`` and ``bfgs`` both carry ``count``, ``params``,
``radius``, ``num_shrinks`` and ``linesearch_state``, which these helpers read
and replace; each transform keeps its own memory and diagnostics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._memory import scale, where
from ._status import SearchStatus
from ._tree import all_finite, choose_lazy
from .linesearch._common import missing_names

# Recovery from a non-finite trial point: the step is shrunk by this factor; at
# this many consecutive non-finite trials the memory is reset and the solve
# restarts from the last finite iterate with a steepest-descent step no longer
# than half the last trial.
SHRINK = 0.5
MAX_SHRINKS = 4

# Line-search outcomes after which the curvature memory is discarded.
RESET_STATUSES = (
    SearchStatus.NOT_DESCENT,
    SearchStatus.LINESEARCH_FAILED,
    SearchStatus.NON_FINITE,
)


def default_linesearch(
    dtype: Any = jnp.float64,
) -> optax.GradientTransformationExtraArgs:
    """Return the line search ``nnxopt.lbfgs`` runs when none is given.

    For float64 parameters, ``nnxopt.linesearch.more_thuente()``: the
    Moré–Thuente strong-Wolfe search that scipy's L-BFGS-B uses. For float32
    and lower precisions, ``nnxopt.linesearch.hager_zhang()``, whose
    approximate Wolfe conditions accept a step by its slopes when the decrease
    is below the rounding noise of the loss (there Moré–Thuente's value test
    fails every search, and the solve stalls). Both try the unit step first and
    report a ``status`` that ``lbfgs`` reads to reset its memory.

    Args:
        dtype: the (real) dtype of the parameters.
    """
    from .linesearch import hager_zhang, more_thuente

    if jnp.finfo(dtype).eps < 1e-10:
        return more_thuente()
    return hager_zhang()


class StepRule(NamedTuple):
    """What scales the direction: a line search, or a fixed step.

    Attributes:
        uses_linesearch: whether it is a line search (``update`` then needs
            ``value``, ``grad`` and ``value_fn``).
        given: the line search, ``optax.scale_by_learning_rate`` for a fixed
            step, or ``None``: the default search for the dtype.
    """

    uses_linesearch: bool
    given: optax.GradientTransformation | None

    def inner(self, dtype: Any) -> optax.GradientTransformationExtraArgs:
        # The default search depends on the parameters' dtype, a static
        # property: init and update pick the same one.
        return optax.with_extra_args_support(self.given or default_linesearch(dtype))


def step_rule(
    learning_rate: optax.ScalarOrSchedule | None,
    linesearch: optax.GradientTransformation | None,
) -> StepRule:
    """The :class:`StepRule` of ``learning_rate`` or (if it is None) ``linesearch``."""
    if learning_rate is None:
        return StepRule(True, linesearch)
    return StepRule(False, optax.scale_by_learning_rate(learning_rate, flip_sign=False))


class LossArgs(NamedTuple):
    """The keyword arguments of ``update`` beyond ``(updates, state, params)``."""

    value: jax.Array | None
    grad: optax.Updates | None
    value_fn: Callable[..., jax.Array] | None
    extra: dict[str, Any]


def strong(tree: Any) -> Any:
    """Drop weak types so that ``init`` and ``update`` return identical avals."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), tree)


def missing_loss_args(call: str, value: Any, grad: Any, value_fn: Any) -> None:
    """Explain a missing ``value``, ``grad`` or ``value_fn`` (``lbfgs``, ``bfgs``)."""
    missing = missing_names(value, grad, value_fn)
    if missing:
        raise TypeError(
            f"{call}: update is missing the keyword argument(s) "
            f"{', '.join(missing)}: its line search evaluates the loss. Call "
            "update(grad, state, params, value=value, grad=grad, "
            "value_fn=loss_fn) with value, grad = "
            "optax.value_and_grad_from_state(loss_fn)(params, state=state), "
            f"or use {call}(learning_rate=...) for a fixed step."
        )


def extra_args_update(
    call: str,
    body: Callable[[optax.Updates, Any, optax.Params, LossArgs], Any],
    *,
    needs_loss: bool,
    missing_error: Callable[[str, Any, Any, Any], None] = missing_loss_args,
) -> optax.TransformUpdateExtraArgsFn:
    """Return the ``update`` of ``call``: checks its arguments, then ``body``.

    Args:
        call: the public name, for the messages (``"nnxopt.lbfgs"``).
        body: ``body(updates, state, params, args)`` with ``params`` not None.
        needs_loss: whether ``value``, ``grad`` and ``value_fn`` are required
            (a line search), checked by ``missing_error(call, value, grad,
            value_fn)``.
        missing_error: raises ``TypeError`` naming what is missing.
    """

    def update_fn(
        updates: optax.Updates,
        state: Any,
        params: optax.Params | None = None,
        *,
        value: jax.Array | None = None,
        grad: optax.Updates | None = None,
        value_fn: Callable[..., jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, Any]:
        if params is None:
            raise TypeError(
                f"{call}: update needs params: call "
                "update(grad, state, params, value=..., grad=..., value_fn=...)."
            )
        if needs_loss:
            missing_error(call, value, grad, value_fn)
        return body(updates, state, params, LossArgs(value, grad, value_fn, extra_args))

    return update_fn


def transform(
    call: str,
    config: Any,
    init: Callable[[Any, optax.Params], Any],
    update: Callable[..., tuple[optax.Updates, Any]],
    *,
    needs_loss: bool,
    missing_error: Callable[[str, Any, Any, Any], None] = missing_loss_args,
) -> optax.GradientTransformationExtraArgs:
    """The transform ``init(config, params)``, ``update(config, updates, state,
    params, args)``, its ``update`` checked by :func:`extra_args_update`.

    ``config`` is a NamedTuple of settings (with its :class:`StepRule`): the
    functions are module-level, and the solve's compile cache keys the
    transform on the settings' values.
    """
    body = functools.partial(update, config)
    return optax.GradientTransformationExtraArgs(
        functools.partial(init, config),
        extra_args_update(
            call, body, needs_loss=needs_loss, missing_error=missing_error
        ),
    )


def finite_point(g: Any, value: jax.Array | None) -> jax.Array:
    """Whether the gradient (a pytree) and ``value`` (when given) are finite."""
    finite = all_finite(g)
    if value is not None:
        finite &= jnp.all(jnp.isfinite(value))
    return finite


def should_reset(
    measured: jax.Array, ls_state: Any, ss: jax.Array, num_stored: jax.Array
) -> jax.Array:
    """Whether to discard the memory: a failed search or no step at all.

    After a search that reports ``NOT_DESCENT``, ``LINESEARCH_FAILED`` or
    ``NON_FINITE`` in its ``status`` (a search without one never fails), or
    made no step (``s·s == 0``), the memory, if any, is what sent the solve
    astray.
    """
    status = optax.tree.get(ls_state, "status")
    bad_search = jnp.zeros((), bool)
    if status is not None:
        bad_search = jnp.isin(status, jnp.asarray(RESET_STATUSES, jnp.int32))
    return measured & (bad_search | (ss == 0)) & (num_stored > 0)


def first_step_scale(
    radius: jax.Array, gnorm: jax.Array, scale_init_precond: bool, dtype: Any
) -> jax.Array:
    """``gamma`` of the steepest-descent step ``-gamma g`` with no curvature.

    ``min(1, radius / ||g||)``: a first trial no longer than ``radius``; with
    ``scale_init_precond=False``, 1 unless a recovery shortened ``radius``.
    """
    gamma = jnp.minimum(1, radius / gnorm).astype(dtype)
    if not scale_init_precond:
        gamma = jnp.where(radius < 1, gamma, 1).astype(dtype)
    return gamma


def bad_direction(
    finite_now: jax.Array,
    nonzero_grad: jax.Array,
    finite_direction: jax.Array,
    slope: jax.Array,
) -> jax.Array:
    """Whether a direction at a finite point is non-finite or not downhill."""
    return (
        finite_now
        & nonzero_grad
        & ~(finite_direction & jnp.isfinite(slope) & (slope < 0))
    )


def search_along(
    rule: StepRule,
    direction: optax.Updates,
    state: Any,
    params: optax.Params,
    args: LossArgs,
    dtype: Any,
) -> tuple[optax.Updates, Any]:
    """Run the line search (or fixed step) ``rule`` along ``direction``.

    ``state`` is the transform's state after the update, with the line-search
    state it had before; the returned state holds the search's new one.
    """
    old = state.linesearch_state
    kwargs = dict(args.extra)
    if rule.uses_linesearch:
        kwargs.update(value=args.value, grad=args.grad, value_fn=args.value_fn)
    step, ls_state = rule.inner(dtype).update(direction, old, params, **kwargs)
    ls_state = optax.tree.cast_like(ls_state, old)
    step = optax.tree.cast_like(step, params)
    # A line search that returns a non-finite step makes no step; the next
    # update then sees no progress and resets the memory.
    step = choose_lazy(~all_finite(step), lambda: optax.tree.zeros_like(step), step)
    return step, state._replace(linesearch_state=strong(ls_state))


def search_or_step_back(
    finite_now: jax.Array,
    search: Callable[[], tuple[optax.Updates, Any]],
    recover: Callable[[], tuple[optax.Updates, Any]],
) -> tuple[optax.Updates, Any]:
    """``search()`` at a finite point, else ``recover()`` (a ``lax.cond``)."""
    return jax.lax.cond(finite_now, lambda _: search(), lambda _: recover(), None)


def mark_stale(ls_state: Any) -> Any:
    """Set the stored ``value`` (if any) to ``inf``.

    Makes ``optax.value_and_grad_from_state`` re-evaluate at the new point.
    """
    if optax.tree.get(ls_state, "value") is not None:
        ls_state = optax.tree.set(
            ls_state, value=jnp.full_like(optax.tree.get(ls_state, "value"), jnp.inf)
        )
    return ls_state


class StepBack(NamedTuple):
    """The step back from a non-finite trial point (see :func:`step_back`)."""

    updates: optax.Updates
    give_up: jax.Array
    state: Any
    info: Any


def step_back(
    state: Any,
    info: Any,
    params: optax.Params,
    s: optax.Updates,
    s_finite: jax.Array,
    ss: jax.Array,
    dtype: Any,
) -> StepBack:
    """Step back from the non-finite trial point ``x_prev + s``.

    Move to ``x_prev + s/2``, or, at the ``MAX_SHRINKS``-th non-finite trial in
    a row (``give_up``), back to ``x_prev`` with a first step shortened to
    ``SHRINK * ||s||``. Returns the step, ``give_up`` (the caller resets its
    memory then), ``state`` with ``count``, ``radius``, ``num_shrinks`` and
    ``linesearch_state`` replaced, and ``info`` with ``num_resets`` and
    ``num_nonfinite`` counted.

    Args:
        s: ``params - state.params`` (a pytree like ``params``).
        s_finite: whether ``s`` is finite; ``ss``: ``s·s``, in ``dtype``.
    """
    num_shrinks = state.num_shrinks + 1
    give_up = num_shrinks >= MAX_SHRINKS
    back = scale(jnp.where(give_up, -1, SHRINK - 1).astype(dtype), s)
    usable = (state.count > 0) & s_finite
    back = where(usable, back, optax.tree.zeros_like(back))
    new_radius = jnp.minimum(1, SHRINK * jnp.sqrt(ss)).astype(dtype)
    new_state = state._replace(
        count=optax.safe_increment(state.count),
        radius=jnp.where(give_up, new_radius, state.radius),
        num_shrinks=jnp.where(give_up, 0, num_shrinks),
        linesearch_state=strong(mark_stale(state.linesearch_state)),
    )
    new_info = info._replace(
        num_resets=info.num_resets + give_up.astype(jnp.int32),
        num_nonfinite=info.num_nonfinite + 1,
    )
    return StepBack(optax.tree.cast_like(back, params), give_up, new_state, new_info)


def counted(info: Any, skipped: jax.Array, reset: jax.Array) -> Any:
    """``info`` with this update's skipped pair and reset counted."""
    return info._replace(
        num_skipped=info.num_skipped + skipped.astype(jnp.int32),
        num_resets=info.num_resets + reset.astype(jnp.int32),
    )


def curvature_ok(
    measured: jax.Array, finite: Any, sy: jax.Array, yy: jax.Array, eps: Any
) -> jax.Array:
    """Whether a measured pair is used: finite, with ``s·y > eps·y·y``."""
    return measured & finite & jnp.isfinite(sy) & jnp.isfinite(yy) & (sy > eps * yy)
