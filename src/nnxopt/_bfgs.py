"""Dense BFGS (and the self-scaled BFGS / Broyden family) as an optax transform."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import _quasi_newton as qn
from ._broyden import rank_two_update, scaling_parameters
from ._memory import placed_zeros
from ._tree import dot, gathered, placed_like, ravel

_CALL = "nnxopt.bfgs"

#: Default of ``max_dense_bytes``: 2 GiB for the ``n x n`` inverse Hessian, i.e.
#: up to 16384 float64 or 23170 float32 parameters.
MAX_DENSE_BYTES = 2**31


class BfgsInfo(NamedTuple):
    """Diagnostics of ``nnxopt.bfgs``, cumulative over the solve (``int32``).

    The counters mean what those of ``nnxopt.LbfgsInfo`` mean.

    Attributes:
        num_skipped: curvature pairs not used (``s·y <= eps·y·y``, or a
            non-finite pair or update coefficient).
        num_resets: times the inverse Hessian was reset to the identity
            (line-search failure, no progress, a non-descent or non-finite
            direction, repeated non-finite trials).
        num_nonfinite: updates called at a point with a non-finite loss or
            gradient (each one shrinks the step).

    Example:
        >>> import jax.numpy as jnp, nnxopt
        >>> info = nnxopt.bfgs().init(jnp.zeros(3)).bfgs_info
        >>> [int(n) for n in info]  # nothing skipped, reset or non-finite yet
        [0, 0, 0]
    """

    num_skipped: jax.Array
    num_resets: jax.Array
    num_nonfinite: jax.Array


class BfgsState(NamedTuple):
    """State of ``nnxopt.bfgs``: a dense inverse-Hessian approximation.

    Attributes:
        count: number of ``update`` calls (``int32``).
        params: the last iterate with a finite loss and gradient, the anchor of
            the next curvature pair and of the recovery from non-finite points.
        updates: the incoming updates (gradient) at ``params``.
        inv_hessian: ``H``, shape ``(n, n)`` over the flattened parameters, in
            their common dtype; read as the identity while ``num_updates == 0``
            (a reset zeroes the counter; the next update stores the identity).
        num_updates: pairs folded into ``H`` since the last reset (``int32``).
        grad_inv_hessian_grad: ``g·H g`` at ``params`` with the ``H`` that gave
            the last direction (the self-scaling needs ``s·B s``, equal to
            ``(s·g)^2 / g·H g`` for a step along ``-H g``).
        radius: largest length of the unit step while ``num_updates == 0`` (1,
            or less after a recovery from non-finite points).
        num_shrinks: consecutive non-finite trials since the last finite one.
        bfgs_info: diagnostics, see ``BfgsInfo``.
        linesearch_state: the state of the line search (or of the fixed step),
            holding ``value``, ``grad`` and ``learning_rate`` for a line search.

    Example:
        >>> import jax.numpy as jnp, nnxopt
        >>> state = nnxopt.bfgs().init({"w": jnp.zeros(3), "b": jnp.zeros(())})
        >>> state.inv_hessian.shape, int(state.num_updates)  # 3 + 1 parameters
        ((4, 4), 0)
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, like optax
    params: optax.Params
    updates: optax.Updates
    inv_hessian: jax.Array
    num_updates: jax.Array
    grad_inv_hessian_grad: jax.Array
    radius: jax.Array
    num_shrinks: jax.Array
    bfgs_info: BfgsInfo
    linesearch_state: optax.OptState


def _flat_dtype(params: Any) -> tuple[jnp.dtype, int]:
    """The common float dtype and size of the flattened parameters (trace time)."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{_CALL}: params has no array leaves.")
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{_CALL}: every leaf of params must be a real floating-point "
                f"array; got a leaf of dtype {dtype} and shape {jnp.shape(leaf)}. "
                "Keep integer, boolean and complex values out of the optimized "
                "parameters (e.g. nnx.Optimizer(..., wrt=nnx.Param), or split a "
                "complex parameter into its real and imaginary parts)."
            )
    n = sum(math.prod(jnp.shape(leaf)) for leaf in leaves)
    return jnp.dtype(jnp.result_type(*leaves)), int(n)


def _check_size(n: int, dtype: jnp.dtype, max_dense_bytes: int) -> None:
    need = n * n * dtype.itemsize
    if need > max_dense_bytes:
        raise ValueError(
            f"{_CALL}: the dense inverse Hessian of {n} parameters needs "
            f"n^2 * itemsize = {n}^2 * {dtype.itemsize} bytes = {need / 2**30:.2f} "
            f"GiB ({dtype}), above max_dense_bytes={max_dense_bytes!r} "
            f"({max_dense_bytes / 2**30:.2f} GiB). Use nnxopt.lbfgs() (memory "
            "O(m n)) for a model this size, or raise max_dense_bytes if the "
            "device holds several n x n arrays."
        )


def _check_linesearch(linesearch: Any, state: Any) -> None:
    try:
        fields = [optax.tree.get(state, k) for k in ("learning_rate", "value", "grad")]
    except (KeyError, ValueError):
        fields = [None]
    if any(f is None for f in fields):
        raise ValueError(
            f"{_CALL}: linesearch={linesearch!r} is not a line search that "
            "bfgs can drive: its state must hold exactly one learning_rate, "
            "value and grad (the accepted step, loss and gradient). Pass one "
            "of nnxopt.linesearch.{more_thuente, zoom, hager_zhang, "
            "backtracking}() or optax.scale_by_zoom_linesearch(...), or "
            "learning_rate=... for a fixed step."
        )


def _check_arguments(
    learning_rate: Any,
    linesearch: Any,
    curvature_eps: Any,
    scale_init_precond: Any,
    self_scaling: Any,
    broyden_phi: Any,
    max_dense_bytes: Any,
) -> None:
    for name, value in (
        ("scale_init_precond", scale_init_precond),
        ("self_scaling", self_scaling),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"{_CALL}: {name} must be a bool, got {value!r}.")
    if curvature_eps is not None and not (
        isinstance(curvature_eps, int | float)
        and math.isfinite(curvature_eps)
        and curvature_eps >= 0
    ):
        raise ValueError(
            f"{_CALL}: curvature_eps must be a finite number >= 0 (or None for "
            f"the dtype's machine epsilon), got {curvature_eps!r}."
        )
    if broyden_phi is not None and not (
        isinstance(broyden_phi, int | float) and 0 <= broyden_phi <= 1
    ):
        raise ValueError(
            f"{_CALL}: broyden_phi must be a number in [0, 1] (1: BFGS, 0: DFP) "
            "or None (the self-scaled Broyden choice of Urbán et al.), got "
            f"{broyden_phi!r}."
        )
    if (
        isinstance(max_dense_bytes, bool)
        or not isinstance(max_dense_bytes, int)
        or max_dense_bytes < 1
    ):
        raise ValueError(
            f"{_CALL}: max_dense_bytes must be an int >= 1 (bytes allowed for "
            f"the n x n inverse Hessian), got {max_dense_bytes!r}."
        )
    if learning_rate is not None and linesearch is not None:
        raise ValueError(
            f"{_CALL}: give either learning_rate (a fixed step, no line search) "
            f"or linesearch, not both; got learning_rate={learning_rate!r} and "
            f"linesearch={linesearch!r}."
        )
    if linesearch is not None and not isinstance(
        linesearch, optax.GradientTransformation
    ):
        raise TypeError(
            f"{_CALL}: linesearch must be an optax line-search transform (e.g. "
            "nnxopt.linesearch.zoom()), got "
            f"{type(linesearch).__name__}: {linesearch!r}."
        )


class _Config(NamedTuple):
    """The settings of one ``bfgs(...)``."""

    curvature_eps: float | None
    scale_init_precond: bool
    self_scaling: bool
    broyden_phi: float | None
    max_dense_bytes: int
    rule: qn.StepRule


class _Fold(NamedTuple):
    inv_hessian: jax.Array
    num_updates: jax.Array
    folded: jax.Array
    skipped: jax.Array
    reset: jax.Array


def _fold_pair(
    config: _Config,
    state: BfgsState,
    s: jax.Array,
    y: jax.Array,
    g_prev: jax.Array,
    measured: jax.Array,
    eps: Any,
) -> _Fold:
    """Reset after a failed search, then fold the pair ``(s, y)`` into ``H``.

    A reset only sets ``num_updates = 0`` (``H`` is then read as the identity):
    for large ``n`` the ``n x n`` matrix is the cost of an iteration, and this
    way it is read twice (``H y``, ``H g``) and written once per iteration.
    """
    dtype = state.inv_hessian.dtype
    n = s.shape[0]
    sy, yy, ss = dot(s, y), dot(y, y), dot(s, s)
    # A non-finite entry of s or y makes s·s or y·y non-finite (an inf times
    # zero is nan), which curvature_ok rejects: no pass over s and y to check.
    pair_ok = qn.curvature_ok(measured, jnp.isfinite(ss), sy, yy, eps)
    reset = qn.should_reset(measured, state.linesearch_state, ss, state.num_updates)
    num_updates = jnp.where(reset, 0, state.num_updates)

    # Shanno-Phua: before the first update H = (s·y / y·y) I.
    safe_sy = jnp.where(pair_ok, sy, 1)
    gamma = sy / jnp.where(yy > 0, yy, 1) if config.scale_init_precond else 1
    first = num_updates == 0
    gamma = jnp.where(first & pair_ok, gamma, 1).astype(dtype)
    # s·B s: exact for H = gamma I; for a step along -H g it is (s·g)^2 / g·H g.
    ghg = state.grad_inv_hessian_grad
    sbs = jnp.where(first, ss / gamma, dot(s, g_prev) ** 2 / jnp.where(ghg > 0, ghg, 1))
    # The where keeps a stale H out of the arithmetic when it is not used.
    hy = jnp.where(first, gamma * y, state.inv_hessian @ gathered(y))
    b = sbs / safe_sy
    h = dot(y, hy) / safe_sy
    tau, phi = scaling_parameters(b, h, n, config.self_scaling, config.broyden_phi)
    s_ok, y_ok = jnp.where(pair_ok, s, 0), jnp.where(pair_ok, y, 0)
    hy_ok = jnp.where(pair_ok, hy, 0)
    tau = jnp.where(pair_ok, tau, 1)
    # Finite inputs and coefficients; an overflow inside H shows up in H g and
    # resets there.
    scalars = jnp.stack([tau, phi, dot(y, hy), sy]).astype(dtype)
    folded = pair_ok & jnp.all(jnp.isfinite(hy)) & jnp.all(jnp.isfinite(scalars))
    eye = placed_like(jnp.eye(n, dtype=dtype), state.inv_hessian)
    # One fused elementwise pass: H_pre (gamma I or H), the update, the selects.
    h_pre = jnp.where(first, gamma * eye, state.inv_hessian)
    updated = rank_two_update(h_pre, s_ok, y_ok, hy_ok, tau, phi)
    # A matrix read as the identity is stored as one, in the same pass.
    kept = jnp.where(first, eye, state.inv_hessian)
    return _Fold(
        inv_hessian=jnp.where(folded, updated, kept),
        num_updates=jnp.where(folded, num_updates + 1, num_updates),
        folded=folded,
        skipped=measured & ~folded,
        reset=reset,
    )


def _direction(
    fold: _Fold,
    flat_g: jax.Array,
    radius: jax.Array,
    finite_now: jax.Array,
    scale_init_precond: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``d = -H g`` (the capped ``-g`` while ``H`` is I), with its safeguard.

    Returns ``d``, ``num_updates`` (0 after a non-descent or non-finite
    ``d``, which falls back to the capped ``-g``), whether that happened, and
    ``g·H g`` for the next self-scaling.
    """
    dtype = fold.inv_hessian.dtype
    gg = dot(flat_g, flat_g)
    gamma_empty = qn.first_step_scale(radius, jnp.sqrt(gg), scale_init_precond, dtype)
    empty = fold.num_updates == 0
    hg = fold.inv_hessian @ gathered(flat_g)  # rows like H's
    flat_d = jnp.where(empty, -gamma_empty * flat_g, -hg)
    slope = dot(flat_g, flat_d)
    finite_d = jnp.all(jnp.isfinite(flat_d))
    bad_direction = qn.bad_direction(finite_now, gg > 0, finite_d, slope)
    flat_d = jnp.where(bad_direction, -gamma_empty * flat_g, flat_d)
    num_updates = jnp.where(bad_direction, 0, fold.num_updates)
    ghg = jnp.where(num_updates == 0, gg, -slope).astype(dtype)
    return flat_d, num_updates, bad_direction, ghg


def bfgs(
    learning_rate: optax.ScalarOrSchedule | None = None,
    linesearch: optax.GradientTransformation | None = None,
    curvature_eps: float | None = None,
    scale_init_precond: bool = True,
    self_scaling: bool = False,
    broyden_phi: float | None = 1.0,
    max_dense_bytes: int = MAX_DENSE_BYTES,
) -> optax.GradientTransformationExtraArgs:
    r"""Return dense BFGS, or a self-scaled BFGS / Broyden method, as an optax transform.

    For models up to ~10^4 parameters (PINNs, small networks, physical-model
    fits), where a full inverse-Hessian approximation ``H`` (``n x n`` over the
    flattened parameters), self-scaled, reaches a far lower loss than L-BFGS in
    the same number of evaluations (``docs/choosing_a_solver.md``). Same protocol as ``nnxopt.lbfgs``: ``update(updates,
    state, params, *, value, grad, value_fn)``, value/gradient reuse through
    ``optax.value_and_grad_from_state``, any ``nnxopt.linesearch``, usable in
    ``nnxopt.minimize``, ``Optimizer.minimize_step`` and ``Optimizer.update``.
    At each update, with gradient ``g_k``:

    1. The pair ``s = x_k - x_{k-1}``, ``y = g_k - g_{k-1}`` updates ``H`` only
       if it is finite and ``s·y > eps·y·y`` (and its coefficients are):

       .. math::

           H_{k+1} = \frac{1}{\tau_k}\Big(H_k - \frac{H_k y\,(H_k y)^\top}{y^\top
           H_k y} + \phi_k v v^\top\Big) + \frac{s s^\top}{s^\top y}

       (``nnxopt._broyden.inverse_hessian_update``). Plain BFGS is ``tau_k = phi_k = 1``.
       Before the first update (and after a reset) ``H = (s·y / y·y) I``
       (Shanno–Phua initial scaling).
    2. The direction is ``d = -H g`` (``-min(1, 1/||g||) g`` while ``H`` is the
       identity). If ``d`` is non-finite or not a descent direction (``g·d >=
       0``: ``H`` lost positive definiteness to round-off), ``H`` is reset to
       the identity and the scaled ``-g`` used instead.
    3. The line search scales ``d``, its first trial being the unit step. ``H``
       is reset when the previous search reports ``NOT_DESCENT``,
       ``LINESEARCH_FAILED`` or ``NON_FINITE``, or made no step.
    4. At a point with a non-finite loss or gradient it steps back towards the
       last finite iterate like ``nnxopt.lbfgs``. Parameters never become
       non-finite. A reset sets ``num_updates = 0`` (``H`` is then read as the
       identity) rather than rewriting the ``n x n`` matrix; an ``H`` that an
       overflow made non-finite is discarded that way and overwritten at the
       next update.

    The self-scaled variants (options of this function, one code path):

    - ``self_scaling=True`` (``broyden_phi=1``): self-scaled BFGS (SSBFGS),
      ``tau_k = min(1, s·y / s·B_k s)``, the Oren–Luenberger factor capped at 1
      as Al-Baali chose; it shrinks ``B`` (grows ``H``) when the curvature
      along the step is lower than the model's, which helps the ill-conditioned,
      slowly curving losses of PINNs.
    - ``broyden_phi=None, self_scaling=True``: self-scaled Broyden (SSBroyden),
      ``phi_k`` and ``tau_k`` chosen each step as in Urbán, Stefanou & Pons
      (2025) and Kiyani et al. (2025); see ``nnxopt._broyden.scaling_parameters``.
    - ``broyden_phi`` in ``[0, 1]``: a fixed member of the Broyden class
      (1: BFGS, 0: DFP).

    Each reduces to plain BFGS (``tau_k = phi_k = 1``) when ``s·B_k s <= s·y``
    (SSBFGS), or when ``H_k y = s`` already holds (``b_k = h_k = 1``, every
    variant).

    Memory: ``H`` holds ``n^2`` values of the parameters' common dtype (mixed
    float dtypes are flattened to their promotion, e.g. float32 + float64 ->
    float64; the updates are cast back leaf by leaf); an update makes a few
    ``n x n`` temporaries. ``init`` raises when ``n^2 * itemsize`` exceeds
    ``max_dense_bytes``. Sharding: ``H`` cannot be sharded like the
    parameters; its rows are placed like the flattened parameter vector and
    its columns replicated, from ``init`` on (a parameter sharded on its first
    axis over ``d`` devices: ``n^2 / d`` values per device). With replicated
    parameters (data parallelism) every device holds all of ``H``: for large
    sharded models use ``nnxopt.lbfgs`` or ``nnxopt.lbfgsb`` (``docs/scale.md``).

    Args:
        learning_rate: a fixed step size (or schedule) instead of a line search.
            ``None`` (default) runs ``linesearch``.
        linesearch: an optax line search whose state has ``value``, ``grad``
            and ``learning_rate`` (any ``nnxopt.linesearch``). ``None``
            (default): ``more_thuente()`` in float64, ``hager_zhang()`` in
            float32 (``nnxopt.lbfgs``'s choice: strong Wolfe where the loss
            resolves the decrease, approximate Wolfe below that).
        curvature_eps: a pair is skipped when ``s·y <= curvature_eps * y·y``.
            ``None`` (default): the machine epsilon of the parameters' dtype.
        scale_init_precond: Shanno–Phua scaling of the first ``H`` and the
            capped ``1/||g||`` first step, rather than ``H = I``.
        self_scaling: scale ``H`` by ``1/tau_k`` at each update (see above).
        broyden_phi: the Broyden parameter ``phi`` of the inverse update, in
            ``[0, 1]`` (default 1: BFGS), or ``None`` for the self-scaled
            Broyden choice of ``phi_k`` each step.
        max_dense_bytes: the largest ``n^2 * itemsize`` allowed for ``H``
            (default ``2**31``, 2 GiB: 16384 float64 or 23170 float32
            parameters).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is
        ``BfgsState``.

    Raises:
        TypeError: a non-float leaf in ``params`` (at ``init``), ``linesearch``
            not an optax transform, a non-bool flag, or ``update`` running a
            line search without ``value``, ``grad`` and ``value_fn``.
        ValueError: ``n^2 * itemsize > max_dense_bytes`` (at ``init``), a line
            search whose state lacks ``learning_rate``/``value``/``grad``,
            ``curvature_eps`` negative, ``broyden_phi`` outside ``[0, 1]``, or
            both ``learning_rate`` and ``linesearch`` given.

    Example:
        >>> import jax.numpy as jnp, optax, nnxopt
        >>> def f(x):
        ...     return jnp.sum((x - 1.0) ** 2 * jnp.arange(1.0, 4.0))
        >>> opt = nnxopt.bfgs(self_scaling=True)
        >>> x = jnp.zeros(3)
        >>> state = opt.init(x)
        >>> value_and_grad = optax.value_and_grad_from_state(f)
        >>> for _ in range(8):
        ...     value, grad = value_and_grad(x, state=state)
        ...     updates, state = opt.update(
        ...         grad, state, x, value=value, grad=grad, value_fn=f
        ...     )
        ...     x = optax.apply_updates(x, updates)
        >>> print(jnp.round(x, 4))
        [1. 1. 1.]

    References:
        Nocedal & Wright, Numerical Optimization, 2nd ed. (2006), section 6.1:
        the BFGS inverse update (6.17) and the initial scaling (6.20).

        Oren & Luenberger, Self-scaling variable metric (SSVM) algorithms,
        Management Science 20 (1974).

        Al-Baali, Numerical experience with a class of self-scaling quasi-Newton
        algorithms, J. Optim. Theory Appl. 96 (1998).

        Urbán, Stefanou & Pons, Unveiling the optimization process of physics
        informed neural networks: how accurate and competitive can PINNs be?,
        J. Comput. Phys. 523 (2025) 113656, arXiv:2405.04230, section 2: the
        self-scaled Broyden update and its ``tau_k``, ``theta_k``, ``phi_k``.

        Kiyani, Shukla, Urbán, Darbon & Karniadakis, Which optimizer works best
        for physics-informed neural networks and Kolmogorov-Arnold networks?,
        arXiv:2501.16371 (2025): SSBFGS and SSBroyden with a Wolfe line search.
    """
    _check_arguments(
        learning_rate,
        linesearch,
        curvature_eps,
        scale_init_precond,
        self_scaling,
        broyden_phi,
        max_dense_bytes,
    )
    config = _Config(
        curvature_eps=curvature_eps,
        scale_init_precond=scale_init_precond,
        self_scaling=self_scaling,
        broyden_phi=broyden_phi,
        max_dense_bytes=max_dense_bytes,
        rule=qn.step_rule(learning_rate, linesearch),
    )
    return qn.transform(
        _CALL, config, _init, _update, needs_loss=config.rule.uses_linesearch
    )


def _init(config: _Config, params: optax.Params) -> BfgsState:
    dtype, n = _flat_dtype(params)
    _check_size(n, dtype, config.max_dense_bytes)
    ls_state = qn.strong(config.rule.inner(dtype).init(params))
    if config.rule.uses_linesearch:
        _check_linesearch(config.rule.given, ls_state)
    int0 = jnp.zeros((), jnp.int32)
    return BfgsState(
        count=int0,
        params=placed_zeros(params),
        updates=placed_zeros(params),
        inv_hessian=_placed_identity(params, dtype),
        num_updates=int0,
        grad_inv_hessian_grad=jnp.zeros((), dtype),
        radius=jnp.ones((), dtype),
        num_shrinks=int0,
        bfgs_info=BfgsInfo(int0, int0, int0),
        linesearch_state=ls_state,
    )


def _placed_identity(params: Any, dtype: jnp.dtype) -> jax.Array:
    """The ``n x n`` identity, its rows placed like the flattened parameters.

    ``jnp.eye`` alone does not depend on any input, so under ``jit`` it is
    replicated on every device, and moved at the first step to the layout the
    loop gives ``H`` (rows like ``H @ y``, like the flattened vector). Built
    from the vector (see :func:`nnxopt._memory.placed_zeros`), its rows are
    sharded like it from ``init`` on when the vector is sharded (see
    :func:`nnxopt._tree.ravel`), the columns replicated; it is replicated
    otherwise.
    """
    flat = ravel(params)[0].astype(dtype)
    n = flat.shape[0]
    return placed_zeros(flat, (n,)).T + jnp.eye(n, dtype=dtype)


def _update(
    config: _Config,
    updates: optax.Updates,
    state: BfgsState,
    params: optax.Params,
    args: qn.LossArgs,
) -> tuple[optax.Updates, BfgsState]:
    dtype = state.inv_hessian.dtype
    eps = jnp.finfo(dtype).eps if config.curvature_eps is None else config.curvature_eps
    flat_g, unravel = ravel(updates)
    flat_g = flat_g.astype(dtype)
    flat_x = ravel(params)[0].astype(dtype)
    flat_anchor = ravel(state.params)[0].astype(dtype)
    s = flat_x - flat_anchor
    g_prev = ravel(state.updates)[0].astype(dtype)
    y = flat_g - g_prev
    finite_now = qn.finite_point(flat_g, args.value)
    fold = _fold_pair(config, state, s, y, g_prev, (state.count > 0) & finite_now, eps)
    radius = jnp.where(fold.folded, 1, state.radius).astype(dtype)
    flat_d, num_updates, bad_direction, ghg = _direction(
        fold, flat_g, radius, finite_now, config.scale_init_precond
    )
    # A non-finite H (only an overflow of a finite update can make one)
    # gives a non-finite H g: H is discarded (num_updates = 0) and the next
    # update overwrites it. Replacing it here would cost a copy of H at
    # every iteration (measured: 2x the iteration at n = 4000).
    direction = optax.tree.cast_like(unravel(flat_d), params)
    accepted = BfgsState(
        count=optax.safe_increment(state.count),
        params=params,
        updates=optax.tree.cast_like(updates, state.updates),
        inv_hessian=fold.inv_hessian,
        num_updates=num_updates,
        grad_inv_hessian_grad=ghg,
        radius=radius,
        num_shrinks=jnp.zeros_like(state.num_shrinks),
        bfgs_info=qn.counted(state.bfgs_info, fold.skipped, fold.reset | bad_direction),
        linesearch_state=state.linesearch_state,
    )
    return qn.search_or_step_back(
        finite_now,
        lambda: qn.search_along(config.rule, direction, accepted, params, args, dtype),
        lambda: _recover(state, params, s, dtype),
    )


def _recover(
    state: BfgsState, params: Any, s: jax.Array, dtype: jnp.dtype
) -> tuple[optax.Updates, BfgsState]:
    """Step back from a non-finite trial point, as ``nnxopt.lbfgs`` does.

    Move to ``x_prev + s/2``; at the ``MAX_SHRINKS``-th non-finite trial in a
    row, back to ``x_prev`` with ``H = I`` and a shorter first step.
    """
    s_tree = optax.tree.sub(params, state.params)
    ss = dot(s, s)
    back = qn.step_back(
        state, state.bfgs_info, params, s_tree, jnp.all(jnp.isfinite(s)), ss, dtype
    )
    new_state = back.state._replace(
        num_updates=jnp.where(back.give_up, 0, state.num_updates),
        bfgs_info=back.info,
    )
    return back.updates, new_state
