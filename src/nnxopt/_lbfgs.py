"""L-BFGS as an optax transform, with the safeguards optax lacks."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import _compact
from . import _quasi_newton as qn
from ._memory import new_memory, placed_zeros, push, two_loop_recursion
from ._memory import scale as _scale
from ._memory import vdot as _vdot
from ._memory import zero_if as _zero_if
from ._quasi_newton import default_linesearch as default_linesearch
from ._tree import all_finite as _all_finite
from ._tree import choose_lazy

__all__ = ["LbfgsInfo", "LbfgsState", "lbfgs", "two_loop_recursion"]

_CALL = "nnxopt.lbfgs"


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
        gram_memory: ``[S'Y, Y'Y]`` by slot, shape ``(2, m, m)``, for a memory
            of more than ``2**16`` elements (``m`` times the parameters), which
            applies ``H`` in the compact form; ``None`` otherwise.
        anchor_products: ``[S'g, Y'g]`` at ``params`` (``g = updates``), shape
            ``(2, m)`` with the compact form; ``None`` otherwise.
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
    gram_memory: jax.Array | None
    anchor_products: jax.Array | None
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
    2. The direction is ``d = -H_k g_k`` with ``H_k^0 = gamma I``, ``gamma =
       s·y / y·y`` from the newest stored pair. With an empty memory (first
       step, after a reset) ``gamma = min(1, 1/||g||)``: the unit trial step
       has length at most 1. If ``d`` is non-finite or not a
       descent direction (``g·d >= 0``) the memory is reset and that scaled
       ``-g`` is used instead. ``H_k g_k`` comes from the two-loop recursion,
       or, for a memory of more than ``2**16`` elements (``memory_size``
       times the parameters), from the compact form (same matrix, about half
       the passes over the parameters; its small Gram matrices are kept in
       the state).
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

        Byrd, Nocedal & Schnabel, Representations of quasi-Newton matrices and
        their use in limited memory methods, Mathematical Programming 63 (1994)
        (the compact form).
    """

    _check_arguments(memory_size, curvature_eps, learning_rate, linesearch)
    config = _Config(
        memory_size=memory_size,
        scale_init_precond=scale_init_precond,
        curvature_eps=curvature_eps,
        rule=qn.step_rule(learning_rate, linesearch),
    )
    return qn.transform(
        _CALL, config, _init, _update, needs_loss=config.rule.uses_linesearch
    )


def _check_arguments(
    memory_size: Any, curvature_eps: Any, learning_rate: Any, linesearch: Any
) -> None:
    if isinstance(memory_size, bool) or not isinstance(memory_size, int):
        raise TypeError(f"{_CALL}: memory_size must be an int, got {memory_size!r}.")
    if memory_size < 1:
        raise ValueError(f"{_CALL}: memory_size must be >= 1, got {memory_size!r}.")
    if curvature_eps is not None and not (
        math.isfinite(curvature_eps) and curvature_eps >= 0
    ):
        raise ValueError(
            f"{_CALL}: curvature_eps must be a finite number >= 0 (or None "
            f"for the dtype's machine epsilon), got {curvature_eps!r}."
        )
    if learning_rate is not None and linesearch is not None:
        raise ValueError(
            f"{_CALL}: give either learning_rate (a fixed step, no line "
            "search) or linesearch, not both; got "
            f"learning_rate={learning_rate!r} and linesearch={linesearch!r}."
        )
    if linesearch is not None and not isinstance(
        linesearch, optax.GradientTransformation
    ):
        raise TypeError(
            f"{_CALL}: linesearch must be an optax line-search transform "
            "(e.g. optax.scale_by_zoom_linesearch(...)), got "
            f"{type(linesearch).__name__}: {linesearch!r}."
        )


class _Config(NamedTuple):
    """The settings of one ``lbfgs(...)``."""

    memory_size: int
    scale_init_precond: bool
    curvature_eps: float | None
    rule: qn.StepRule


def _init(config: _Config, params: optax.Params) -> LbfgsState:
    dtype = _real_dtype(params)
    m = config.memory_size
    stacked = new_memory(params, m)
    gram, anchor = (
        _compact.new_gram(m, dtype) if _compact.enabled(params, m) else (None, None)
    )
    int0 = jnp.zeros((), jnp.int32)
    return LbfgsState(
        count=int0,
        params=placed_zeros(params),
        updates=placed_zeros(params),
        diff_params_memory=stacked,
        diff_updates_memory=stacked,
        weights_memory=jnp.zeros((m,), dtype),
        gram_memory=gram,
        anchor_products=anchor,
        memory_idx=int0,
        num_pairs=int0,
        radius=jnp.ones((), dtype),
        num_shrinks=int0,
        lbfgs_info=LbfgsInfo(int0, int0, int0),
        linesearch_state=qn.strong(config.rule.inner(dtype).init(params)),
    )


class _Memory(NamedTuple):
    """The memory after storing this update's pair (or a reset)."""

    buffers: tuple[Any, Any, jax.Array]  # (s, y, rho) ring buffers
    memory_idx: jax.Array
    num_pairs: jax.Array
    radius: jax.Array
    skipped: jax.Array
    reset: jax.Array
    slot: jax.Array  # where the pair went, if stored
    stored: jax.Array
    sy: jax.Array
    yy: jax.Array


def _store_pair(
    config: _Config,
    state: LbfgsState,
    s: optax.Updates,
    y: optax.Updates,
    finite_now: jax.Array,
    ss: jax.Array,
) -> _Memory:
    """Reset after a failed search, then store ``(s, y)`` if it has curvature."""
    dtype = state.weights_memory.dtype
    m = config.memory_size
    eps = jnp.finfo(dtype).eps if config.curvature_eps is None else config.curvature_eps
    sy, yy = _vdot(s, y, dtype), _vdot(y, y, dtype)
    measured = (state.count > 0) & finite_now
    # A non-finite entry of s or y makes s·y or y·y non-finite (an inf times
    # zero is nan), which curvature_ok rejects: no pass over s and y to check.
    pair_ok = qn.curvature_ok(measured, jnp.isfinite(ss), sy, yy, eps)
    reset = qn.should_reset(measured, state.linesearch_state, ss, state.num_pairs)
    # A reset zeroes the weights only: a slot of weight 0 is skipped by the
    # two-loop recursion, and the O(m n) pair buffers are never copied.
    buffers = (
        state.diff_params_memory,
        state.diff_updates_memory,
        _zero_if(reset, state.weights_memory),
    )
    num_pairs = jnp.where(reset, 0, state.num_pairs)
    rho = jnp.where(pair_ok, 1 / jnp.where(pair_ok, sy, 1), 0).astype(dtype)
    buffers, memory_idx, num_pairs = push(
        buffers, (s, y, rho), pair_ok, state.memory_idx, num_pairs, m
    )
    radius = jnp.where(pair_ok, jnp.ones_like(state.radius), state.radius)
    return _Memory(
        buffers, memory_idx, num_pairs, radius, measured & ~pair_ok, reset,
        slot=state.memory_idx, stored=pair_ok, sy=sy, yy=yy,
    )  # fmt: skip


class _Gram(NamedTuple):
    """The compact form's Gram matrices and products (``None`` without it)."""

    gram: jax.Array | None
    products: jax.Array | None


def _compact_direction(
    config: _Config,
    g: optax.Updates,
    mem: _Memory,
    matrices: jax.Array,
    prev: jax.Array,
    gamma_empty: jax.Array,
) -> tuple[optax.Updates, _Gram]:
    """``H g`` in the compact form, with the Gram matrices after this
    update's pair (see ``nnxopt._compact``).

    In a ``lax.cond`` (on a non-empty memory): XLA would otherwise fuse the
    write of the new pair into each product's read of the buffers as well as
    into the state, and copy the O(m n) buffers every iteration.
    """
    dtype = mem.buffers[2].dtype

    def full(pairs: tuple[Any, Any], g: optax.Updates, matrices: jax.Array) -> Any:
        now = _compact.products(pairs, g, dtype)
        matrices = _compact.refresh(
            matrices, prev, now, mem.slot, mem.stored, mem.sy, mem.yy
        )
        if config.scale_init_precond:
            sy_l, yy_l = _compact.newest_products(matrices, mem.memory_idx)
            gamma = sy_l / jnp.where(yy_l > 0, yy_l, 1)
        else:
            gamma = jnp.ones((), dtype)
        h_g = _compact.apply(
            g, pairs, mem.buffers[2], matrices, now, gamma, mem.memory_idx
        )
        return h_g, _Gram(matrices, now)

    def empty(pairs: tuple[Any, Any], g: optax.Updates, matrices: jax.Array) -> Any:
        # No stored pair: the Gram matrices are unused, and the products
        # (zeros) enter only entries of pairs stored before a reset.
        return _scale(gamma_empty, g), _Gram(matrices, jnp.zeros_like(prev))

    return jax.lax.cond(mem.num_pairs > 0, full, empty, mem.buffers[:2], g, matrices)


def _direction(
    config: _Config,
    g: optax.Updates,
    mem: _Memory,
    finite_now: jax.Array,
    state: LbfgsState,
) -> tuple[optax.Updates, _Memory, _Gram]:
    """``d = -H g`` (two-loop recursion or compact form), or the scaled
    ``-g``, with its safeguard.

    A non-finite or non-descent ``d`` resets the memory (``mem`` returned with
    it discarded) and falls back to the scaled ``-g``.
    """
    dtype = mem.buffers[2].dtype
    gnorm = jnp.sqrt(_vdot(g, g, dtype))
    gamma_empty = qn.first_step_scale(
        mem.radius, gnorm, config.scale_init_precond, dtype
    )
    gram = _Gram(state.gram_memory, state.anchor_products)
    if state.gram_memory is not None and state.anchor_products is not None:
        h_g, gram = _compact_direction(
            config, g, mem, state.gram_memory, state.anchor_products, gamma_empty
        )
    else:
        if config.scale_init_precond:
            sy_l, yy_l = _newest_products(
                mem.buffers[:2], mem.memory_idx, mem.num_pairs, dtype
            )
            gamma_pairs = sy_l / jnp.where(yy_l > 0, yy_l, 1)
        else:
            gamma_pairs = jnp.ones((), dtype)
        gamma = jnp.where(mem.num_pairs > 0, gamma_pairs, gamma_empty)
        h_g = two_loop_recursion(g, *mem.buffers, gamma, mem.memory_idx)  # type: ignore[call-arg]
    direction = _scale(-1, h_g)
    slope = _vdot(g, direction, dtype)
    # A non-finite entry of d makes g·d non-finite (inf times 0 is nan), so
    # the slope's check covers d's.
    bad = qn.bad_direction(finite_now, gnorm > 0, jnp.isfinite(slope), slope)
    direction = choose_lazy(bad, lambda: _scale(-gamma_empty, g), direction)
    mem = mem._replace(
        buffers=(*mem.buffers[:2], _zero_if(bad, mem.buffers[2])),
        num_pairs=jnp.where(bad, 0, mem.num_pairs),
        reset=mem.reset | bad,
    )
    return direction, mem, gram


def _update(
    config: _Config,
    updates: optax.Updates,
    state: LbfgsState,
    params: optax.Params,
    args: qn.LossArgs,
) -> tuple[optax.Updates, LbfgsState]:
    dtype = state.weights_memory.dtype
    g = updates
    finite_now = qn.finite_point(g, args.value)
    # The curvature pair of the previous step, measured from the last finite
    # iterate (the anchor).
    s = optax.tree.sub(params, state.params)
    y = optax.tree.sub(g, state.updates)
    ss = _vdot(s, s, dtype)
    mem = _store_pair(config, state, s, y, finite_now, ss)
    direction, mem, gram = _direction(config, g, mem, finite_now, state)
    accepted = LbfgsState(
        count=optax.safe_increment(state.count),
        params=params,
        updates=optax.tree.cast_like(g, state.updates),
        diff_params_memory=mem.buffers[0],
        diff_updates_memory=mem.buffers[1],
        weights_memory=mem.buffers[2],
        gram_memory=gram.gram,
        anchor_products=gram.products,
        memory_idx=mem.memory_idx,
        num_pairs=mem.num_pairs,
        radius=mem.radius,
        num_shrinks=jnp.zeros_like(state.num_shrinks),
        lbfgs_info=qn.counted(state.lbfgs_info, mem.skipped, mem.reset),
        linesearch_state=state.linesearch_state,
    )
    return qn.search_or_step_back(
        finite_now,
        lambda: qn.search_along(config.rule, direction, accepted, params, args, dtype),
        lambda: _recover(state, params, s, ss, mem.buffers),
    )


def _recover(
    state: LbfgsState,
    params: optax.Params,
    s: optax.Updates,
    ss: jax.Array,
    buffers: tuple[Any, Any, jax.Array],
) -> tuple[optax.Updates, LbfgsState]:
    """Step back from a non-finite point; giving up discards the memory."""
    dtype = state.weights_memory.dtype
    back = qn.step_back(state, state.lbfgs_info, params, s, _all_finite(s), ss, dtype)
    new_state = back.state._replace(
        # The written buffers, equal to the old ones here (a non-finite point
        # writes no pair): with the old ones live in this branch, XLA would
        # copy both O(m n) buffers every iteration.
        diff_params_memory=buffers[0],
        diff_updates_memory=buffers[1],
        weights_memory=_zero_if(back.give_up, state.weights_memory),
        num_pairs=jnp.where(back.give_up, 0, state.num_pairs),
        lbfgs_info=back.info,
    )
    return back.updates, new_state
