"""L-BFGS-B: limited-memory BFGS within box bounds, as an optax transform.

The iteration of Byrd, Lu, Nocedal and Zhu (1995) with the subspace step of
Morales and Nocedal (2011), written from the papers on the parameters raveled
into one vector (``jax.flatten_util.ravel_pytree``):

1. The compact form of the L-BFGS matrix, ``B = theta I - W M W^T`` with
   ``W = [Y, theta S]`` and ``M`` the inverse of the ``2m x 2m`` middle matrix
   ``[[-D, L^T], [L, theta S^T S]]`` (BLNZ eq. 3.2 to 3.4).
2. The generalised Cauchy point: the first local minimiser of the quadratic
   model along the projected steepest-descent path ``P(x - t g)``, visiting the
   breakpoints in order (BLNZ section 4, algorithm CP).
3. Subspace minimisation over the variables free at the Cauchy point, by the
   direct primal method (BLNZ section 5.1); the minimiser is projected into
   the box and kept if it gives a descent direction, else truncated to the
   box as in BLNZ (Morales and Nocedal 2011, section 2).
4. A Moré–Thuente line search along ``d = x_bar - x`` whose largest step keeps
   the iterate in the box, computed at run time.

Every trial point is clipped to the box before the loss sees it (the clip
passes the gradient of the loss at the clipped point through unchanged), so
rounding in ``x + a d`` can never evaluate the loss outside the box.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import _bounds
from . import _quasi_newton as qn
from ._memory import placed_zeros, push
from ._tree import dot, gathered, pick, ravel
from .linesearch import _common
from .linesearch._settings import check_settings
from .linesearch.more_thuente import MoreThuenteState, _search

__all__ = ["LbfgsbInfo", "LbfgsbState", "lbfgsb"]

_CALL = "nnxopt.lbfgsb"
_INT = jnp.int32
# Largest step of a search along a direction no bound limits (scipy's 1e10).
_BIG_STEP = 1e10


class LbfgsbInfo(NamedTuple):
    """Diagnostics of ``nnxopt.lbfgsb``, cumulative over the solve (``int32``).

    Attributes:
        num_skipped: curvature pairs not stored (``s·y <= eps·y·y`` or non-finite).
        num_resets: times the memory was discarded (a failed line search).
        num_truncated: subspace steps whose projection was not a descent
            direction, truncated to the box instead (Morales–Nocedal fallback).

    Example:
        >>> import jax.numpy as jnp, nnxopt
        >>> info = nnxopt.lbfgsb().init(jnp.zeros(3)).lbfgsb_info
        >>> [int(n) for n in info]  # nothing skipped, reset or truncated yet
        [0, 0, 0]
    """

    num_skipped: jax.Array
    num_resets: jax.Array
    num_truncated: jax.Array


class LbfgsbState(NamedTuple):
    """State of ``nnxopt.lbfgsb``.

    Attributes:
        count: number of ``update`` calls (``int32``).
        params: the last iterate (anchor of the next curvature pair).
        updates: the gradient at ``params``.
        s_memory: stacked ``s_i``, shape ``(memory_size, n)`` over the raveled
            parameters, placed like the raveled parameters from ``init`` on
            (the memory axis replicated); ``y_memory`` likewise for ``y_i``.
        memory_idx: slot the next pair is written to (``int32``).
        num_pairs: number of stored pairs (``int32``).
        num_active: parameters at a bound at ``params`` (``int32``). Its presence
            declares to the solve loop that this transform honours ``bounds=``.
        lbfgsb_info: see :class:`LbfgsbInfo`.
        linesearch_state: the Moré–Thuente state (``value``, ``grad``,
            ``learning_rate``, ``status``, ``info``).

    Example:
        >>> import jax.numpy as jnp, nnxopt
        >>> state = nnxopt.lbfgsb(memory_size=5).init({"w": jnp.zeros(3)})
        >>> state.s_memory.shape, int(state.num_pairs)
        ((5, 3), 0)
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, like optax
    params: optax.Params
    updates: optax.Updates
    s_memory: jax.Array
    y_memory: jax.Array
    memory_idx: jax.Array
    num_pairs: jax.Array
    num_active: jax.Array
    lbfgsb_info: LbfgsbInfo
    linesearch_state: MoreThuenteState


class _Compact(NamedTuple):
    """``B = theta I - W M W^T`` (BLNZ eq. 3.2), unused slots zero in ``W``."""

    w: jax.Array  # (n, 2m)
    m: jax.Array  # (2m, 2m)
    theta: jax.Array


def _compact(s: jax.Array, y: jax.Array, valid: jax.Array, age: jax.Array) -> _Compact:
    """The compact form of the pairs ``valid`` (``age``: larger is newer)."""
    dtype = s.dtype
    s = jnp.where(valid[:, None], s, 0)
    y = jnp.where(valid[:, None], y, 0)
    sy = dot(s, y.T)  # sy[i, j] = s_i . y_j
    ss = dot(s, s.T)
    newest = jnp.argmax(jnp.where(valid, age, -1))
    yy_new = dot(y[newest], y[newest])
    sy_new = sy[newest, newest]
    theta = jnp.where(jnp.any(valid), yy_new / jnp.where(sy_new > 0, sy_new, 1), 1)
    theta = theta.astype(dtype)
    both = valid[:, None] & valid[None, :]
    d = jnp.where(valid, jnp.diagonal(sy), 1)
    low = jnp.where(both & (age[:, None] > age[None, :]), sy, 0)  # L, strictly lower
    # M = K^{-1}, K = [[-D, L^T], [L, theta S^T S]], by the Schur complement
    # Sc = theta S^T S + L D^{-1} L^T (positive definite).
    eye = jnp.eye(s.shape[0], dtype=dtype)
    sc = jnp.where(both, theta * ss, 0) + (low / d[None, :]) @ low.T
    sc = jnp.where(valid[:, None] | valid[None, :], sc, eye)
    chol = jax.scipy.linalg.cho_factor(sc, lower=True)
    sc_inv = jax.scipy.linalg.cho_solve(chol, eye)
    dl = low.T / d[:, None]  # D^{-1} L^T
    top_right = dl @ sc_inv
    top_left = -jnp.diag(1 / d) + top_right @ dl.T
    mid = jnp.block([[top_left, top_right], [top_right.T, sc_inv]])
    w = jnp.concatenate([y.T, theta * s.T], axis=1)
    return _Compact(w, mid, theta)


def _breakpoints(x: jax.Array, g: jax.Array, lo: jax.Array, up: jax.Array) -> jax.Array:
    """``t_i`` where ``x_i - t g_i`` meets its bound (``inf``: never; 0: at once)."""
    t_up = (x - up) / jnp.where(g < 0, g, -1)
    t_lo = (x - lo) / jnp.where(g > 0, g, 1)
    t = jnp.where(g < 0, t_up, jnp.where(g > 0, t_lo, jnp.inf))
    return jnp.where(jnp.isnan(t), jnp.inf, jnp.maximum(t, 0))


def _cauchy(x: jax.Array, g: jax.Array, lo: jax.Array, up: jax.Array, b: _Compact) -> jax.Array:  # fmt: skip
    """The generalised Cauchy point (BLNZ algorithm CP): ``P(x - t* g)``."""
    dtype = x.dtype
    t = _breakpoints(x, g, lo, up)
    d = jnp.where(t > 0, -g, 0)
    # The breakpoints, sorted, on every device (a sort needs the whole
    # vector); the loop below reads single entries of sharded vectors.
    key = gathered(jnp.where(t > 0, t, jnp.inf))
    order = jnp.argsort(key)
    num_breaks = jnp.sum(jnp.isfinite(key))
    p = dot(b.w.T, d)
    fp = -dot(d, d)
    fpp = -b.theta * fp - p @ (b.m @ p)

    def minimiser(fp: jax.Array, fpp: jax.Array) -> jax.Array:
        return jnp.where(fpp > 0, -fp / jnp.where(fpp > 0, fpp, 1), 0)

    zero = jnp.zeros((), dtype)
    carry = (_INT(0), zero, fp, fpp, p, jnp.zeros_like(p), minimiser(fp, fpp))

    def cond(c: tuple) -> jax.Array:
        j, t_old, *_, dt_min = c
        idx = order[jnp.minimum(j, x.shape[0] - 1)]
        return (j < num_breaks) & (dt_min >= key[idx] - t_old)

    def body(c: tuple) -> tuple:
        j, t_old, fp, fpp, p, cc, _ = c
        i = order[j]
        dt = key[i] - t_old
        gi, wi = pick(g, i), pick(b.w, i)
        zi = jnp.where(gi < 0, pick(up, i), pick(lo, i)) - pick(x, i)
        cc = cc + dt * p
        fp = fp + dt * fpp + gi * gi + b.theta * gi * zi - gi * (wi @ (b.m @ cc))
        fpp = fpp - b.theta * gi * gi - 2 * gi * (wi @ (b.m @ p))
        fpp = fpp - gi * gi * (wi @ (b.m @ wi))
        p = p + gi * wi
        return j + 1, key[i], fp, fpp, p, cc, minimiser(fp, fpp)

    _, t_old, *_, dt_min = jax.lax.while_loop(cond, body, carry)
    t_star = t_old + jnp.maximum(dt_min, 0)
    return jnp.clip(x - t_star * g, lo, up)


def _subspace(x: jax.Array, g: jax.Array, lo: jax.Array, up: jax.Array, xcp: jax.Array, b: _Compact) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """The point ``x_bar`` the search aims at, and whether it was truncated.

    Minimises the model over the variables free at ``xcp`` (direct primal
    method, BLNZ 5.1), projects the minimiser into the box (Morales–Nocedal),
    and truncates it to the box instead when that is not a descent direction.
    """
    free = (xcp > lo) & (xcp < up)
    c = dot(b.w.T, xcp - x)
    reduced = jnp.where(free, g + b.theta * (xcp - x) - b.w @ (b.m @ c), 0)
    wz = jnp.where(free[:, None], b.w, 0)
    v = b.m @ dot(wz.T, reduced)
    eye = jnp.eye(v.shape[0], dtype=x.dtype)
    n_mat = eye - (b.m @ dot(wz.T, wz)) / b.theta
    v = jnp.linalg.solve(n_mat, v)
    du = -reduced / b.theta - (wz @ v) / b.theta**2
    du = jnp.where(free & jnp.isfinite(du), du, 0)
    projected = jnp.clip(xcp + du, lo, up)
    descent = dot(g, projected - x) < 0
    # Largest alpha <= 1 with xcp + alpha du in the box.
    room = jnp.where(du > 0, (up - xcp) / jnp.where(du > 0, du, 1), jnp.inf)
    room = jnp.where(du < 0, (lo - xcp) / jnp.where(du < 0, du, 1), room)
    alpha = jnp.clip(jnp.min(room, initial=jnp.inf), 0, 1)
    truncated = jnp.clip(xcp + alpha * du, lo, up)
    return jnp.where(descent, projected, truncated), ~descent


def _max_step(x: jax.Array, d: jax.Array, lo: jax.Array, up: jax.Array) -> jax.Array:
    """The largest ``a`` with ``x + a d`` in the box (``_BIG_STEP`` at most)."""
    room = jnp.where(d > 0, (up - x) / jnp.where(d > 0, d, 1), jnp.inf)
    room = jnp.where(d < 0, (lo - x) / jnp.where(d < 0, d, 1), room)
    return jnp.minimum(jnp.min(room, initial=jnp.inf), _BIG_STEP).astype(x.dtype)


@jax.custom_jvp
def _clip(v: jax.Array, lo: jax.Array, up: jax.Array) -> jax.Array:
    """Clip whose derivative is the identity: ``grad f(clip(x))`` at the clip."""
    return jnp.minimum(jnp.maximum(v, lo), up)


@_clip.defjvp
def _clip_jvp(primals: tuple, tangents: tuple) -> tuple:
    v, lo, up = primals
    return _clip(v, lo, up), tangents[0]


def boxed(value_fn: Callable[..., Any], bounds: tuple) -> Callable[..., Any]:
    """``value_fn`` evaluated at the box point nearest its argument."""
    lower, upper = bounds

    def fn(params: Any, *args: Any, **kwargs: Any) -> Any:
        return value_fn(jax.tree.map(_clip, params, lower, upper), *args, **kwargs)

    return fn


def _settings(slope_rtol: Any, curv_rtol: Any, max_linesearch_steps: Any) -> Any:
    return check_settings(
        _CALL, slope_rtol, curv_rtol, max_linesearch_steps, None, 0.1, 1.0, False
    )


def lbfgsb(
    bounds: tuple[Any, Any] | None = None,
    *,
    memory_size: int = 10,
    slope_rtol: float = 1e-3,
    curv_rtol: float = 0.9,
    max_linesearch_steps: int = 20,
) -> optax.GradientTransformationExtraArgs:
    r"""Return L-BFGS-B: L-BFGS that keeps the parameters in a box.

    Minimises over ``lower <= params <= upper`` (leaf-wise) with the algorithm
    of Byrd, Lu, Nocedal and Zhu: at each update a generalised Cauchy point on
    the projected steepest-descent path, a quasi-Newton step over the
    variables it leaves free, and a Moré–Thuente search whose largest step
    keeps the iterate in the box. No loss evaluation ever sees a point outside
    the box. ``nnxopt.solve(..., bounds=...)`` and ``nnxopt.minimize(...,
    bounds=...)`` pick it; use it directly in ``nnxopt.Optimizer`` for the step
    API.

    ``update(grad, state, params, *, value, grad, value_fn, bounds=None)``:
    ``bounds`` given to ``update`` replaces the one given here (the solve loop
    passes it at run time). ``params`` must already be in the box (the solve
    projects its start).

    Args:
        bounds: ``(lower, upper)``, each a scalar, ``None`` (free) or a pytree
            with the parameters' paths (``None`` leaves free; a leaf may cover
            a subtree). ``None`` (default): no bound unless ``update`` gets one.
        memory_size: number of curvature pairs kept (``m``), at least 1.
        slope_rtol: sufficient-decrease constant of the search (L-BFGS-B's 1e-3).
        curv_rtol: curvature constant of the search (0.9).
        max_linesearch_steps: evaluations per search (20, scipy's ``maxls``).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` with state
        :class:`LbfgsbState`.

    Raises:
        TypeError: a wrong type (``memory_size``, ``bounds``), or ``update``
            without ``value``, ``grad`` and ``value_fn``.
        ValueError: ``memory_size < 1``, search constants out of range, or
            bounds that do not match the parameters or have ``lower > upper``.

    Example:
        >>> import jax, jax.numpy as jnp, nnxopt
        >>> def f(p):
        ...     return jnp.sum((p["x"] - jnp.array([2.0, -3.0])) ** 2)
        >>> sol = nnxopt.solve(f, {"x": jnp.zeros(2)}, bounds=(-1.0, 1.0))
        >>> print(sol.params["x"])
        [ 1. -1.]

    References:
        R. H. Byrd, P. Lu, J. Nocedal and C. Zhu, A limited memory algorithm
        for bound constrained optimization, SIAM J. Sci. Comput. 16(5), 1995.

        J. L. Morales and J. Nocedal, Remark on "Algorithm 778: L-BFGS-B",
        ACM Trans. Math. Software 38(1), 2011.
    """
    if isinstance(memory_size, bool) or not isinstance(memory_size, int):
        raise TypeError(f"{_CALL}: memory_size must be an int, got {memory_size!r}.")
    if memory_size < 1:
        raise ValueError(f"{_CALL}: memory_size must be >= 1, got {memory_size!r}.")
    cfg = _settings(slope_rtol, curv_rtol, max_linesearch_steps)
    if bounds is not None and (
        not isinstance(bounds, tuple | list) or len(bounds) != 2
    ):
        raise TypeError(
            f"{_CALL}: bounds must be a pair (lower, upper) or None; got {bounds!r}."
        )
    config = _Config(memory_size, bounds, cfg)
    return qn.transform(
        _CALL, config, _init, _update_in_box, needs_loss=True,
        missing_error=_common.missing_args_error,
    )  # fmt: skip


class _Config(NamedTuple):
    """The settings of one ``lbfgsb(...)``: ``m``, the bounds, the search's."""

    memory_size: int
    bounds: tuple[Any, Any] | None
    search: Any  # _settings.Settings


def _init(config: _Config, params: optax.Params) -> LbfgsbState:
    m = config.memory_size
    flat, _ = ravel(params)
    # (m, n) zeros placed like the raveled parameters (the memory axis
    # replicated), not on one device: see placed_zeros.
    zeros = placed_zeros(flat, (m,))
    int0 = jnp.zeros((), _INT)
    ls = MoreThuenteState(**_common.init_fields(params))
    return LbfgsbState(
        count=int0,
        params=placed_zeros(params),
        updates=placed_zeros(params),
        s_memory=zeros,
        y_memory=zeros,
        memory_idx=int0,
        num_pairs=int0,
        num_active=int0,
        lbfgsb_info=LbfgsbInfo(int0, int0, int0),
        linesearch_state=qn.strong(ls),
    )


def _update_in_box(
    config: _Config,
    updates: optax.Updates,
    state: LbfgsbState,
    params: optax.Params,
    args: qn.LossArgs,
) -> tuple[optax.Updates, LbfgsbState]:
    """The update; ``bounds`` given to ``update`` replaces the configured one."""
    bounds = args.extra.get("bounds")
    value, grad, value_fn = args.value, args.grad, args.value_fn
    assert value_fn is not None
    box = bounds if bounds is not None else config.bounds
    box = _bounds.normalize(_CALL, (None, None) if box is None else box, params)
    inside = _inside(params, box)
    m, cfg = config.memory_size, config.search

    def search(_: None) -> tuple[Any, LbfgsbState]:
        return _update(updates, state, params, value, grad, value_fn, box, cfg, m)

    def enter(_: None) -> tuple[Any, LbfgsbState]:
        # A start outside the box (the step API; solve projects its start):
        # step onto the box and mark the stored value stale, so that the
        # next update evaluates there.
        step = optax.tree.sub(_bounds.project(params, box), params)
        ls = qn.mark_stale(state.linesearch_state)
        return step, state._replace(linesearch_state=ls)

    return jax.lax.cond(inside, search, enter, None)


def _inside(params: Any, box: tuple) -> jax.Array:
    """Whether ``params`` is in the box up to rounding (``x + (p - x)``)."""
    x = ravel(params)[0]
    p = ravel(_bounds.project(params, box))[0]
    eps = jnp.finfo(x.dtype).eps
    return jnp.all(jnp.abs(p - x) <= 4 * eps * jnp.maximum(jnp.abs(x), 1))


def _memory(state: LbfgsbState, x: jax.Array, g: jax.Array, ok: jax.Array, m: int) -> tuple:  # fmt: skip
    """Store the pair ``(x - x_prev, g - g_prev)`` if it has curvature; reset
    after a failed search. Returns ``(s, y, idx, num_pairs, skipped, reset)``."""
    dtype = x.dtype
    x_prev, _ = ravel(state.params)
    g_prev, _ = ravel(state.updates)
    s, y = x - x_prev, g - g_prev
    sy, yy, ss = dot(s, y), dot(y, y), dot(s, s)
    measured = (state.count > 0) & ok
    pair_ok = qn.curvature_ok(measured, True, sy, yy, jnp.finfo(dtype).eps)
    reset = qn.should_reset(measured, state.linesearch_state, ss, state.num_pairs)
    num_pairs = jnp.where(reset, 0, state.num_pairs)
    (s_mem, y_mem), idx, num_pairs = push(
        (state.s_memory, state.y_memory),
        (s.astype(dtype), y.astype(dtype)),
        pair_ok,
        state.memory_idx,
        num_pairs,
        m,
    )
    return s_mem, y_mem, idx, num_pairs, measured & ~pair_ok, reset


def _update(
    updates: Any, state: LbfgsbState, params: Any, value: Any, grad: Any,
    value_fn: Callable[..., Any], box: tuple, cfg: Any, m: int,
) -> tuple[Any, LbfgsbState]:  # fmt: skip
    x, unravel = ravel(params)
    g = ravel(updates)[0].astype(x.dtype)
    lo = ravel(box[0])[0].astype(x.dtype)
    up = ravel(box[1])[0].astype(x.dtype)
    ok = qn.finite_point(g, value)
    s_mem, y_mem, idx, num_pairs, skipped, reset = _memory(state, x, g, ok, m)
    age = (jnp.arange(m) - idx) % m
    valid = age >= m - num_pairs
    b = _compact(s_mem, y_mem, valid, age)
    g0 = jnp.where(ok, g, 0)
    xbar, truncated = _subspace(x, g0, lo, up, _cauchy(x, g0, lo, up, b), b)
    d = xbar - x
    stpmax = _max_step(x, d, lo, up)
    # The first iteration (scipy's rule): a trial of length at most 1 and, in
    # a constrained problem, no step beyond x_bar.
    empty = state.count == 0
    constrained = jnp.any(jnp.isfinite(lo) | jnp.isfinite(up))
    boxed_all = jnp.all(jnp.isfinite(lo) & jnp.isfinite(up))
    dnorm = jnp.sqrt(dot(d, d))
    stpmax = jnp.where(empty & constrained, jnp.minimum(stpmax, 1), stpmax)
    first = jnp.where(empty & ~boxed_all, 1 / jnp.where(dnorm > 0, dnorm, 1), 1)
    first = jnp.minimum(first, stpmax)
    settings = dataclasses.replace(cfg, max_learning_rate=stpmax)
    traced: Any = (first, stpmax)  # run_search takes run-time steps too
    step, fields = _common.run_search(
        _CALL, lambda prob: _search(prob, settings), unravel(d), state.linesearch_state,
        params, value=value, grad=grad, value_fn=boxed(value_fn, box), aux=None,
        has_aux=False, initial_step=traced[0], max_learning_rate=traced[1],
        slope_rtol=cfg.slope_rtol, curv_rtol=cfg.curv_rtol,
    )  # fmt: skip
    new_x = _bounds.project(optax.apply_updates(params, step), box)
    new_flat = ravel(new_x)[0]
    step = optax.tree.cast_like(optax.tree.sub(new_x, params), params)
    info = state.lbfgsb_info
    new_state = LbfgsbState(
        count=optax.safe_increment(state.count),
        params=params,
        updates=optax.tree.cast_like(updates, state.updates),
        s_memory=s_mem,
        y_memory=y_mem,
        memory_idx=idx,
        num_pairs=num_pairs,
        num_active=jnp.sum((new_flat <= lo) | (new_flat >= up)).astype(_INT),
        lbfgsb_info=qn.counted(info, skipped, reset)._replace(
            num_truncated=info.num_truncated + truncated.astype(_INT)
        ),
        linesearch_state=qn.strong(MoreThuenteState(**fields)),
    )
    return step, new_state
