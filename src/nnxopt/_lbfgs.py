"""L-BFGS as an optax transform, with the safeguards optax lacks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._memory import new_memory, placed_zeros, two_loop_recursion
from ._memory import scale as _scale
from ._memory import vdot as _vdot
from ._memory import where as _where
from ._memory import zero_if as _zero_if
from ._status import SearchStatus
from ._tree import all_finite as _all_finite

__all__ = ["LbfgsInfo", "LbfgsState", "lbfgs", "two_loop_recursion"]

# Recovery from a non-finite trial point: the step is shrunk by this factor; at
# this many consecutive non-finite trials the memory is reset and the solve
# restarts from the last finite iterate with a steepest-descent step no longer
# than half the last trial.
_SHRINK = 0.5
_MAX_SHRINKS = 4

# Line-search outcomes after which the curvature memory is discarded.
_RESET_STATUSES = (
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


class LbfgsInfo(NamedTuple):
    """Diagnostics of ``nnxopt.lbfgs``, cumulative over the solve (``int32``).

    Attributes:
        num_skipped: curvature pairs not stored (``s·y <= eps·y·y`` or non-finite).
        num_resets: times the memory was discarded (line-search failure, no
            progress, a non-descent or non-finite direction, repeated non-finite
            trials).
        num_nonfinite: updates called at a point with a non-finite loss or
            gradient (each one shrinks the step).

    Example:
        >>> import jax.numpy as jnp, nnxopt
        >>> info = nnxopt.lbfgs().init(jnp.zeros(3)).lbfgs_info
        >>> [int(n) for n in info]  # nothing skipped, reset or non-finite yet
        [0, 0, 0]
    """

    num_skipped: jax.Array
    num_resets: jax.Array
    num_nonfinite: jax.Array


class LbfgsState(NamedTuple):
    """State of ``nnxopt.lbfgs``: a ring buffer of curvature pairs.

    Attributes:
        count: number of ``update`` calls (``int32``).
        params: the last iterate with a finite loss and gradient, the anchor of
            the next curvature pair and of the recovery from non-finite points.
        updates: the incoming updates (gradient) at ``params``.
        diff_params_memory: stacked ``s_i = x_{i+1} - x_i``, leading axis
            ``memory_size``; unused slots are zero.
        diff_updates_memory: stacked ``y_i = g_{i+1} - g_i``, same layout.
        weights_memory: ``rho_i = 1 / (s_i·y_i)``, zero in unused slots.
        memory_idx: slot the next pair is written to (``int32``).
        num_pairs: number of stored pairs, at most ``memory_size`` (``int32``).
        radius: largest length of the unit step while the memory is empty (1, or
            less after a recovery from non-finite points).
        num_shrinks: consecutive non-finite trials since the last finite one.
        lbfgs_info: diagnostics, see ``LbfgsInfo``.
        linesearch_state: the state of the line search (or of the fixed step),
            holding ``value``, ``grad`` and ``learning_rate`` for a line search.

    Example:
        >>> import jax.numpy as jnp, nnxopt
        >>> state = nnxopt.lbfgs(memory_size=5).init({"w": jnp.zeros(3)})
        >>> state.diff_params_memory["w"].shape, int(state.num_pairs)
        ((5, 3), 0)
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, like optax
    params: optax.Params
    updates: optax.Updates
    diff_params_memory: optax.Updates
    diff_updates_memory: optax.Updates
    weights_memory: jax.Array
    memory_idx: jax.Array
    num_pairs: jax.Array
    radius: jax.Array
    num_shrinks: jax.Array
    lbfgs_info: LbfgsInfo
    linesearch_state: optax.OptState


def _real_dtype(tree: Any) -> jnp.dtype:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("nnxopt.lbfgs: params has no array leaves.")
    return jnp.real(jnp.zeros((), jnp.result_type(*leaves))).dtype


def _strong(tree: Any) -> Any:
    """Drop weak types so that ``init`` and ``update`` return identical avals."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), tree)


def _newest_products(
    pairs: tuple[Any, Any], memory_idx: jax.Array, num_pairs: jax.Array, dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """``(s·y, y·y)`` of the newest stored pair (zeros with an empty memory).

    Read in a ``lax.cond``: XLA would otherwise fuse this slice of the
    just-written buffer into one reading the buffer from before the write,
    keeping both alive, and copy the O(m n) buffer every iteration.
    """

    def read(pairs: tuple[Any, Any]) -> tuple[jax.Array, jax.Array]:
        last = (memory_idx - 1) % jax.tree.leaves(pairs)[0].shape[0]
        s_l, y_l = jax.tree.map(lambda x: x[last], pairs)
        return _vdot(s_l, y_l, dtype), _vdot(y_l, y_l, dtype)

    def empty(pairs: tuple[Any, Any]) -> tuple[jax.Array, jax.Array]:
        return jnp.zeros((), dtype), jnp.zeros((), dtype)

    return jax.lax.cond(num_pairs > 0, read, empty, pairs)


def lbfgs(
    learning_rate: optax.ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: optax.GradientTransformation | None = None,
    curvature_eps: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Return the L-BFGS optimizer, with the safeguards ``optax.lbfgs`` lacks.

    A drop-in for ``optax.lbfgs``: ``update(updates, state, params, *, value,
    grad, value_fn, **extra)``, composes with ``optax.chain`` and works with
    ``optax.value_and_grad_from_state``. At each update, with gradient ``g_k``:

    1. The pair ``s = x_k - x_{k-1}``, ``y = g_k - g_{k-1}`` is stored only if it
       is finite and ``s·y > eps·y·y`` (``optax.lbfgs`` stores every pair, so a
       non-convex step can make its direction an ascent one).
    2. The direction is ``d = -H_k g_k`` (two-loop recursion) with ``H_k^0 =
       gamma I``, ``gamma = s·y / y·y`` from the newest stored pair. With an
       empty memory (first step, after a reset) ``gamma = min(1, 1/||g||)``: the
       unit trial step has length at most 1. If ``d`` is non-finite or not a
       descent direction (``g·d >= 0``) the memory is reset and that scaled
       ``-g`` is used instead.
    3. The line search scales ``d``, its first trial being the unit step. The
       memory is reset when the previous search reports ``NOT_DESCENT``,
       ``LINESEARCH_FAILED`` or ``NON_FINITE`` in a ``status`` field, or made no
       step at all.
    4. Called at a point whose gradient (or ``value``, when given) is
       non-finite, it skips the line search and returns the step back towards
       the last finite iterate, halving the trial step; at the 4th non-finite
       trial in a row it resets the memory and goes back to that iterate, with
       a steepest-descent step no longer than half the last trial. Parameters never become non-finite.

    Args:
        learning_rate: a fixed step size (or schedule) instead of a line search.
            ``None`` (default) runs ``linesearch``.
        memory_size: number of curvature pairs kept (``m``), at least 1.
        scale_init_precond: use ``gamma = s·y / y·y`` (and the capped
            ``1/||g||`` first step) rather than ``gamma = 1``.
        linesearch: an optax line search whose state has ``value``, ``grad`` and
            ``learning_rate`` (any ``nnxopt.linesearch``). ``None`` (default):
            chosen from the parameters' dtype by ``default_linesearch``:
            ``more_thuente()`` in float64, ``hager_zhang()`` in float32.
        curvature_eps: a pair is skipped when ``s·y <= curvature_eps * y·y``.
            ``None`` (default): the machine epsilon of the parameters' dtype, the
            test of L-BFGS-B, which rejects only non-positive and round-off
            curvature; raise it (e.g. ``1e-8``) for noisy losses.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is
        ``LbfgsState``.

    Raises:
        TypeError: ``memory_size`` is not an int, ``linesearch`` is not an optax
            transform, or ``update`` runs a line search without ``value``,
            ``grad`` and ``value_fn``.
        ValueError: ``memory_size < 1``, ``curvature_eps`` negative or not
            finite, or both ``learning_rate`` and ``linesearch`` given.

    Example:
        >>> import jax.numpy as jnp, optax, nnxopt
        >>> def f(x):
        ...     return jnp.sum((x - 1.0) ** 2 * jnp.arange(1.0, 4.0))
        >>> opt = nnxopt.lbfgs()
        >>> x = jnp.zeros(3)
        >>> state = opt.init(x)
        >>> value_and_grad = optax.value_and_grad_from_state(f)
        >>> for _ in range(10):
        ...     value, grad = value_and_grad(x, state=state)
        ...     updates, state = opt.update(
        ...         grad, state, x, value=value, grad=grad, value_fn=f
        ...     )
        ...     x = optax.apply_updates(x, updates)
        >>> print(jnp.round(x, 4))
        [1. 1. 1.]

    References:
        Nocedal & Wright, Numerical Optimization, 2nd ed. (2006), Algorithms 7.4
        and 7.5, and section 6.1 (skipping updates).

        Liu & Nocedal, On the limited memory BFGS method for large scale
        optimization, Mathematical Programming 45 (1989).

        Byrd, Lu, Nocedal & Zhu, A limited memory algorithm for bound constrained
        optimization, SIAM J. Sci. Comput. 16 (1995) (the skip test).
    """
    if isinstance(memory_size, bool) or not isinstance(memory_size, int):
        raise TypeError(
            f"nnxopt.lbfgs: memory_size must be an int, got {memory_size!r}."
        )
    if memory_size < 1:
        raise ValueError(
            f"nnxopt.lbfgs: memory_size must be >= 1, got {memory_size!r}."
        )
    if curvature_eps is not None and not (
        math.isfinite(curvature_eps) and curvature_eps >= 0
    ):
        raise ValueError(
            "nnxopt.lbfgs: curvature_eps must be a finite number >= 0 (or None "
            f"for the dtype's machine epsilon), got {curvature_eps!r}."
        )
    if learning_rate is not None and linesearch is not None:
        raise ValueError(
            "nnxopt.lbfgs: give either learning_rate (a fixed step, no line "
            "search) or linesearch, not both; got "
            f"learning_rate={learning_rate!r} and linesearch={linesearch!r}."
        )
    if linesearch is not None and not isinstance(
        linesearch, optax.GradientTransformation
    ):
        raise TypeError(
            "nnxopt.lbfgs: linesearch must be an optax line-search transform "
            "(e.g. optax.scale_by_zoom_linesearch(...)), got "
            f"{type(linesearch).__name__}: {linesearch!r}."
        )
    uses_linesearch = learning_rate is None
    given = (
        linesearch
        if uses_linesearch
        else optax.scale_by_learning_rate(learning_rate, flip_sign=False)
    )

    def inner_for(dtype: jnp.dtype) -> optax.GradientTransformationExtraArgs:
        # The default search depends on the parameters' dtype, a static
        # property: init and update pick the same one.
        return optax.with_extra_args_support(given or default_linesearch(dtype))

    m = memory_size

    def init_fn(params: optax.Params) -> LbfgsState:
        dtype = _real_dtype(params)
        stacked = new_memory(params, m)
        int0 = jnp.zeros((), jnp.int32)
        return LbfgsState(
            count=int0,
            params=placed_zeros(params),
            updates=placed_zeros(params),
            diff_params_memory=stacked,
            diff_updates_memory=stacked,
            weights_memory=jnp.zeros((m,), dtype),
            memory_idx=int0,
            num_pairs=int0,
            radius=jnp.ones((), dtype),
            num_shrinks=int0,
            lbfgs_info=LbfgsInfo(int0, int0, int0),
            linesearch_state=_strong(inner_for(dtype).init(params)),
        )

    def update_fn(
        updates: optax.Updates,
        state: LbfgsState,
        params: optax.Params | None = None,
        *,
        value: jax.Array | None = None,
        grad: optax.Updates | None = None,
        value_fn: Callable[..., jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, LbfgsState]:
        if params is None:
            raise TypeError(
                "nnxopt.lbfgs: update needs params: call "
                "update(grad, state, params, value=..., grad=..., value_fn=...)."
            )
        if uses_linesearch:
            missing = [
                name
                for name, arg in (
                    ("value", value),
                    ("grad", grad),
                    ("value_fn", value_fn),
                )
                if arg is None
            ]
            if missing:
                raise TypeError(
                    f"nnxopt.lbfgs: update is missing the keyword argument(s) "
                    f"{', '.join(missing)}: its line search evaluates the loss. Call "
                    "update(grad, state, params, value=value, grad=grad, "
                    "value_fn=loss_fn) with value, grad = "
                    "optax.value_and_grad_from_state(loss_fn)(params, state=state), "
                    "or use nnxopt.lbfgs(learning_rate=...) for a fixed step."
                )
        dtype = state.weights_memory.dtype
        inner = inner_for(dtype)
        eps = jnp.finfo(dtype).eps if curvature_eps is None else curvature_eps
        g = updates
        started = state.count > 0
        finite_now = _all_finite(g)
        if value is not None:
            finite_now &= jnp.all(jnp.isfinite(value))
        info = state.lbfgs_info

        # The curvature pair of the previous step, measured from the last finite
        # iterate (the anchor).
        s = optax.tree.sub(params, state.params)
        y = optax.tree.sub(g, state.updates)
        sy, yy, ss = _vdot(s, y, dtype), _vdot(y, y, dtype), _vdot(s, s, dtype)
        finite_pair = _all_finite((s, y)) & jnp.isfinite(sy) & jnp.isfinite(yy)
        measured = started & finite_now
        pair_ok = measured & finite_pair & (sy > eps * yy)
        skipped = measured & ~pair_ok

        status = optax.tree.get(state.linesearch_state, "status")
        bad_search = jnp.zeros((), bool)
        if status is not None:
            bad_search = jnp.isin(status, jnp.asarray(_RESET_STATUSES, jnp.int32))
        # A failed search, or no step at all (a search that found nothing): the
        # memory, if any, is what sent the solve astray.
        reset = measured & (bad_search | (ss == 0)) & (state.num_pairs > 0)

        # A reset zeroes the weights only: a slot of weight 0 is skipped by the
        # two-loop recursion, and the O(m n) pair buffers are never copied.
        memory = (
            state.diff_params_memory,
            state.diff_updates_memory,
            _zero_if(reset, state.weights_memory),
        )
        num_pairs = jnp.where(reset, 0, state.num_pairs)
        idx = state.memory_idx
        rho = jnp.where(pair_ok, 1 / jnp.where(pair_ok, sy, 1), 0).astype(dtype)
        # A skipped pair writes out of bounds (dropped): an in-place update.
        slot = jnp.where(pair_ok, idx, m)
        memory = jax.tree.map(
            lambda mem, v: mem.at[slot].set(v, mode="drop"), memory, (s, y, rho)
        )
        memory_idx = jnp.where(pair_ok, (idx + 1) % m, idx)
        num_pairs = jnp.where(pair_ok, jnp.minimum(num_pairs + 1, m), num_pairs)
        radius = jnp.where(pair_ok, jnp.ones_like(state.radius), state.radius)

        # Direction: two-loop recursion, or the scaled steepest descent.
        gnorm = jnp.sqrt(_vdot(g, g, dtype))
        gamma_empty = jnp.minimum(1, radius / gnorm).astype(dtype)
        if scale_init_precond:
            sy_l, yy_l = _newest_products(memory[:2], memory_idx, num_pairs, dtype)
            gamma_pairs = sy_l / jnp.where(yy_l > 0, yy_l, 1)
        else:
            gamma_empty = jnp.where(radius < 1, gamma_empty, 1).astype(dtype)
            gamma_pairs = jnp.ones((), dtype)
        gamma = jnp.where(num_pairs > 0, gamma_pairs, gamma_empty)
        direction = _scale(-1, two_loop_recursion(g, *memory, gamma, memory_idx))  # type: ignore[call-arg]
        slope = _vdot(g, direction, dtype)
        bad_direction = (
            finite_now
            & (gnorm > 0)
            & ~(_all_finite(direction) & jnp.isfinite(slope) & (slope < 0))
        )
        direction = _where(bad_direction, _scale(-gamma_empty, g), direction)
        memory = (*memory[:2], _zero_if(bad_direction, memory[2]))
        num_pairs = jnp.where(bad_direction, 0, num_pairs)
        reset |= bad_direction

        normal_state = LbfgsState(
            count=optax.safe_increment(state.count),
            params=params,
            updates=optax.tree.cast_like(g, state.updates),
            diff_params_memory=memory[0],
            diff_updates_memory=memory[1],
            weights_memory=memory[2],
            memory_idx=memory_idx,
            num_pairs=num_pairs,
            radius=radius,
            num_shrinks=jnp.zeros_like(state.num_shrinks),
            lbfgs_info=LbfgsInfo(
                num_skipped=info.num_skipped + skipped.astype(jnp.int32),
                num_resets=info.num_resets + reset.astype(jnp.int32),
                num_nonfinite=info.num_nonfinite,
            ),
            linesearch_state=state.linesearch_state,
        )

        def search(_: None) -> tuple[optax.Updates, LbfgsState]:
            kwargs = dict(extra_args)
            if uses_linesearch:
                kwargs.update(value=value, grad=grad, value_fn=value_fn)
            step, ls_state = inner.update(
                direction, state.linesearch_state, params, **kwargs
            )
            ls_state = optax.tree.cast_like(ls_state, state.linesearch_state)
            step = optax.tree.cast_like(step, params)
            # A line search that returns a non-finite step makes no step; the next
            # update then sees no progress and resets the memory.
            step = _where(_all_finite(step), step, optax.tree.zeros_like(step))
            return step, normal_state._replace(linesearch_state=_strong(ls_state))

        def recover(_: None) -> tuple[optax.Updates, LbfgsState]:
            # Non-finite loss or gradient at the trial point x_prev + s: move to
            # x_prev + s/2, or, after repeated failure, back to x_prev with a
            # fresh memory and a shorter first step.
            num_shrinks = state.num_shrinks + 1
            give_up = num_shrinks >= _MAX_SHRINKS
            back = _scale(jnp.where(give_up, -1, _SHRINK - 1).astype(dtype), s)
            back = _where(started & _all_finite(s), back, optax.tree.zeros_like(s))
            new_radius = jnp.minimum(1, _SHRINK * jnp.sqrt(ss)).astype(dtype)
            ls_state = state.linesearch_state
            if optax.tree.get(ls_state, "value") is not None:
                # Makes optax.value_and_grad_from_state re-evaluate at the new point.
                ls_state = optax.tree.set(
                    ls_state,
                    value=jnp.full_like(optax.tree.get(ls_state, "value"), jnp.inf),
                )
            new_state = state._replace(
                count=optax.safe_increment(state.count),
                # The written buffers, equal to the old ones here (a non-finite
                # point writes no pair): with the old ones live in this branch,
                # XLA would copy both O(m n) buffers every iteration.
                diff_params_memory=memory[0],
                diff_updates_memory=memory[1],
                weights_memory=_zero_if(give_up, state.weights_memory),
                num_pairs=jnp.where(give_up, 0, state.num_pairs),
                radius=jnp.where(give_up, new_radius, state.radius),
                num_shrinks=jnp.where(give_up, 0, num_shrinks),
                lbfgs_info=info._replace(
                    num_resets=info.num_resets + give_up.astype(jnp.int32),
                    num_nonfinite=info.num_nonfinite + 1,
                ),
                linesearch_state=_strong(ls_state),
            )
            return optax.tree.cast_like(back, params), new_state

        return jax.lax.cond(finite_now, search, recover, None)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
