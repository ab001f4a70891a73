"""``nnxopt.minimize``: a whole full-batch solve as one compiled ``lax.while_loop``.

The model is split once into ``params`` (the ``wrt`` Variables) and ``rest`` (the
other Variables); the solve runs on those pytrees entirely on device, and the
result is written back into the model once, at the end. Each solve is compiled
once per (loss function, model structure, argument shapes, ``maxiter``,
callback on/off, transform *structure*) and cached, so a second call with new
data of the same shape, or with a freshly built but identical ``optax.lbfgs()``,
does not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import io_callback

from ._cache import compiled, transform_key
from ._lbfgs import lbfgs
from ._objective import Objective, PyTree, split_model
from ._optimizer import (
    _all_finite,
    _combine,
    _explain_missing_args,
    _partition,
    _select,
    _stored_value_and_grad,
    accepted_extra_args,
    stable_init_state,
)
from ._status import Status, is_success

_CALL = "nnxopt.minimize"

#: Default ``gtol`` and ``ftol`` per floating-point precision (see ``default_tols``).
DEFAULT_TOLS: dict[str, tuple[float, float]] = {
    "float64": (1e-5, 1e7 * float(np.finfo(np.float64).eps)),
    "float32": (1e-5, 0.0),
    "float16": (1e-3, 10 * float(np.finfo(np.float16).eps)),
    "bfloat16": (1e-2, 10 * 2.0**-7),
}
DEFAULT_MAXITER = 15000
DEFAULT_MAXFEV = 15000


@functools.cache
def _default_tx(dtype: Any) -> optax.GradientTransformationExtraArgs:
    """Return nnxopt's default L-BFGS for parameters of ``dtype`` (one object)."""
    del dtype  # one transform serves every precision (its search follows dtype)
    return lbfgs()


def default_tols(dtype: Any) -> tuple[float, float]:
    """Return the default ``(gtol, ftol)`` for parameters of ``dtype``.

    float64 uses scipy's L-BFGS-B defaults: ``gtol=1e-5`` and ``ftol = factr *
    eps64`` with ``factr=1e7`` (about ``2.2e-9``). float32 keeps ``gtol=1e-5``
    and uses ``ftol=0``: the solve stops on the gradient, or when an accepted
    step does not decrease the loss at all (the float32 floor). The relative
    decrease is divided by ``max(|f_k|, |f_{k+1}|, 1)``, so below a loss of 1
    ``ftol`` bounds an *absolute* decrease, which float32 resolves far below
    ``2.2e-9`` for small losses: with ``ftol=2.2e-9`` a float32 PINN solve stopped
    on a plateau 10 times above the loss scipy reaches in float64; with ``0`` it
    reaches that loss and stops on ``gtol``. float16 and bfloat16 use ``gtol=1e-3`` /
    ``1e-2`` and ``ftol = 10 * eps``.

    Example:
        >>> import jax.numpy as jnp
        >>> default_tols(jnp.float64)
        (1e-05, 2.220446049250313e-09)
        >>> default_tols(jnp.float32)
        (1e-05, 0.0)
    """
    name = jnp.dtype(dtype).name
    return DEFAULT_TOLS.get(name, DEFAULT_TOLS["float32"])


class MinimizeHistory(NamedTuple):
    """Per-iteration trace of a solve, on device.

    Entry ``k`` is the ``k``-th accepted iterate (``0`` is the starting point).
    Arrays have length ``maxiter + 1``; entries after ``nit`` are ``nan`` (and
    ``-1`` for ``nfev``). Use :meth:`trim` to drop the padding.

    Attributes:
        value: the loss at each iterate.
        grad_norm: the infinity norm of the gradient at each iterate.
        nfev: the cumulative number of loss evaluations when the iterate was reached.
    """

    value: Any
    grad_norm: Any
    nfev: Any

    def trim(self) -> MinimizeHistory:
        """Return the history as NumPy arrays without the padding."""
        nfev = np.asarray(self.nfev)
        n = int(np.sum(nfev >= 0))
        return MinimizeHistory(
            np.asarray(self.value)[:n], np.asarray(self.grad_norm)[:n], nfev[:n]
        )


@dataclasses.dataclass(frozen=True)
class MinimizeResult:
    """The outcome of :func:`minimize`; field names follow scipy's ``OptimizeResult``.

    Attributes:
        fun: the loss at the point left in the model (a scalar array).
        grad_norm: the infinity norm of the gradient there.
        nit: the number of accepted iterations.
        nfev: the number of loss evaluations (line-search trials included).
        njev: the number of gradient evaluations.
        success: whether the solve converged (``gtol`` or ``ftol``).
        status: how it ended, an :class:`nnxopt.Status`.
        message: the explanation of ``status``.
        aux: the auxiliary output of ``loss_fn`` at that point (``has_aux=True``),
            else ``None``.
        history: per-iteration values and gradient norms, see :class:`MinimizeHistory`.
    """

    fun: jax.Array
    grad_norm: jax.Array
    nit: int
    nfev: int
    njev: int
    success: bool
    status: Status
    message: str
    aux: Any
    history: MinimizeHistory


class MinimizeInfo(NamedTuple):
    """What ``callback(info)`` receives after each accepted iteration.

    Attributes:
        iteration: the iteration number (``1`` after the first iteration).
        value: the loss at the new iterate.
        grad_norm: the infinity norm of the gradient at the new iterate.
        learning_rate: the step size the line search accepted (``nan`` if the
            transform reports none).
        nfev: the cumulative number of loss evaluations.
    """

    iteration: int
    value: float
    grad_norm: float
    learning_rate: float
    nfev: int


def minimize(
    loss_fn: Callable[..., Any],
    model: Any,
    *args: Any,
    tx: optax.GradientTransformation | None = None,
    wrt: Any = nnx.Param,
    gtol: float | None = None,
    ftol: float | None = None,
    maxiter: int | None = None,
    maxfev: int | None = None,
    has_aux: bool = False,
    callback: Callable[[MinimizeInfo], Any] | None = None,
    progress: bool = False,
    graph: bool | None = None,
    **kwargs: Any,
) -> MinimizeResult:
    """Minimize ``loss_fn(model, *args, **kwargs)`` over the ``wrt`` Variables.

    A full-batch solve (like ``scipy.optimize.minimize``) run as one compiled
    on-device loop; ``model`` is updated in place and a :class:`MinimizeResult`
    returned. The loop stops at the first of (scipy's meanings):

    - ``gtol``: ``max_i |g_i| <= gtol`` (infinity norm of the gradient);
    - ``ftol``: ``0 <= (f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol`` (only
      for transforms with a line search; a step that raises the loss, which an
      approximate-Wolfe search may accept within round-off, does not stop it);
    - ``maxiter`` iterations or ``maxfev`` evaluations;
    - a line search that finds no decrease, a non-finite loss, gradient or
      iterate, or ``callback`` returning ``True``.

    The model is left at the last iterate on success (``gtol``, ``ftol``) and at
    the best (lowest-loss) accepted one otherwise; never at a non-finite point.

    Evaluations: when the transform stores the value and gradient of its accepted
    point (L-BFGS, line searches), they are reused, so ``nfev = 1 + line-search
    evaluations``. A loss that writes model state (BatchNorm statistics, RNG
    counters) costs one more evaluation per iteration: see "State" below.
    ``has_aux=True`` with a reusing transform costs one value evaluation at the end.

    State: every evaluation sees one snapshot of the non-``wrt`` Variables, so all
    trials of an iteration see the same RNG keys and statistics. If ``loss_fn``
    writes state, the loss and gradient at each new iterate are recomputed on the
    state written at the previous iterate, and what that evaluation writes is the
    next snapshot; the state committed to ``model`` is the one written by the
    evaluation at the returned parameters.

    Args:
        loss_fn: ``loss_fn(model, *args, **kwargs)`` returning a scalar, or
            ``(scalar, aux)`` with ``has_aux=True``.
        model: the ``flax.nnx`` module; updated in place.
        *args: arrays (traced) and other values (static) passed to ``loss_fn``.
        tx: any optax transform; ``None`` means nnxopt's default L-BFGS.
            Transforms without a line search (adam, sgd) run until ``gtol`` or
            ``maxiter``.
        wrt: NNX filter of the Variables to optimize.
        gtol: gradient tolerance; default ``1e-5`` in float64 and float32
            (scipy's), see :func:`default_tols`. ``0`` disables it.
        ftol: relative-decrease tolerance; default ``2.2e-9`` in float64
            (scipy's ``factr=1e7``) and ``0`` in float32. ``0`` stops only on an
            accepted step that leaves the loss unchanged.
        maxiter: maximum number of iterations (default 15000, scipy's).
        maxfev: maximum number of loss evaluations (default 15000, scipy's).
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``result.aux`` is the
            aux at the returned point.
        callback: ``callback(info: MinimizeInfo)`` called on the host after each
            accepted iteration; returning ``True`` stops the solve.
        progress: show a tqdm progress bar with the loss and gradient norm
            (needs the ``progress`` extra: ``pip install 'nnxopt[progress]'``).
        graph: NNX graph mode (``True``), tree mode (``False``) or the default.
        **kwargs: keyword arguments passed to ``loss_fn``.

    Returns:
        A :class:`MinimizeResult`.

    Raises:
        TypeError: if ``loss_fn``, ``tx`` or ``callback`` has the wrong type.
        ValueError: for negative tolerances or limits.
        ImportError: if ``progress=True`` and tqdm is not installed.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import nnxopt
        >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> x, y = jnp.ones((8, 2)), jnp.full((8, 1), 3.0)
        >>> result = minimize(lambda m, x, y: jnp.mean((m(x) - y) ** 2), model, x, y)
        >>> result.success, result.status.name
        (True, 'CONVERGED_GTOL')
        >>> bool(result.fun < 1e-8)
        True
    """
    if not callable(loss_fn):
        raise TypeError(f"{_CALL}: loss_fn must be callable; got {loss_fn!r}.")
    if callback is not None and not callable(callback):
        raise TypeError(
            f"{_CALL}: callback must be a function `callback(info) -> bool | None`; "
            f"got {callback!r}."
        )
    graphdef, params, rest = split_model(model, wrt, graph, _CALL)
    dtype = _lowest_precision(params)
    if tx is None:
        tx = _default_tx(dtype)
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            f"{_CALL}: tx must be an optax GradientTransformation (e.g. "
            f"optax.adam(1e-3) or optax.lbfgs()) or None; got {tx!r}."
        )
    d_gtol, d_ftol = default_tols(dtype)
    gtol = _check_tol("gtol", d_gtol if gtol is None else gtol)
    ftol = _check_tol("ftol", d_ftol if ftol is None else ftol)
    maxiter = _check_int("maxiter", DEFAULT_MAXITER if maxiter is None else maxiter, 0)
    maxfev = _check_int("maxfev", DEFAULT_MAXFEV if maxfev is None else maxfev, 1)
    bar = _make_bar(maxiter) if progress else None

    objective = Objective(graphdef, wrt, loss_fn, has_aux, graph, _CALL)
    dynamic, static = _partition((args, kwargs))
    hosted = callback is not None or progress
    solve = compiled(
        ("minimize", transform_key(tx), objective, static, maxiter, hosted),
        lambda: jax.jit(
            functools.partial(_solve, tx, objective, static, maxiter, hosted)
        ),
    )
    run_id = next(_RUN_IDS)
    _RUNS[run_id] = _Run(callback, bar)
    try:
        out = solve(
            params,
            rest,
            dynamic,
            # NumPy scalars: jit transfers them in its fast path, no dispatch
            np.asarray(gtol, _np_dtype(dtype)),
            np.asarray(ftol, _np_dtype(dtype)),
            np.int32(maxfev),
            np.int32(run_id),
        )
        new_params, new_rest, stats = jax.block_until_ready(out)
    finally:
        _RUNS.pop(run_id, None)
        if bar is not None:
            bar.close()
    nnx.update(model, new_params, new_rest)
    # One device-to-host transfer for all the integer fields, not one each.
    counts = np.asarray(stats["counts"])
    status = Status(int(counts[0]))
    return MinimizeResult(
        fun=stats["fun"],
        grad_norm=stats["grad_norm"],
        nit=int(counts[1]),
        nfev=int(counts[2]),
        njev=int(counts[3]),
        success=status.success,
        status=status,
        message=status.message,
        aux=stats["aux"],
        history=MinimizeHistory(*stats["history"]),
    )


# ---------------------------------------------------------------------------
# The compiled solve: pure functions of pytrees.


class _Carry(NamedTuple):
    params: PyTree
    snap: PyTree  # the non-wrt state the current value/grad were computed on
    written: PyTree  # the state that evaluation wrote (None if the loss writes none)
    opt_state: PyTree
    value: jax.Array
    grad: PyTree
    aux: Any
    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    status: jax.Array
    fails: jax.Array  # consecutive failed line searches
    best: tuple  # (params, written, value, grad_norm, aux) of the lowest value
    # (an approximate-Wolfe search may accept a step that raises the loss a little)
    history: tuple  # (value, grad_norm, nfev), length maxiter + 1


def _solve(
    tx: optax.GradientTransformation,
    objective: Objective,
    static: Any,
    maxiter: int,
    hosted: bool,
    params: PyTree,
    rest: PyTree,
    dynamic: list,
    gtol: jax.Array,
    ftol: jax.Array,
    maxfev: jax.Array,
    run_id: jax.Array,
) -> tuple[PyTree, PyTree, dict]:
    args, kwargs = _combine(dynamic, static)
    stateful = objective.writes_state(params, rest, args, kwargs)
    opt_state = stable_init_state(tx, params, tx.init(params))
    names = accepted_extra_args(tx, params, opt_state)
    has_ls = _linesearch_counts(opt_state) is not None
    # nnxopt.lbfgs and nnxopt.bfgs reset after a failed search: let them retry once.
    max_fails = 2 if _resets_after_failure(opt_state) else 1
    reuse = not stateful and _stored_value_and_grad(opt_state, params) is not None
    carry_aux = objective.has_aux and not reuse

    def evaluate(x: PyTree, snap: PyTree) -> tuple:
        (f, (aux, written)), g = objective.value_and_grad(x, snap, args, kwargs)
        return f, g, (aux if carry_aux else None), (written if stateful else None)

    f0, g0, aux0, written0 = evaluate(params, rest)
    dtype = f0.dtype
    gn0 = _inf_norm(g0, dtype)
    one = jnp.ones((), jnp.int32)
    hist = (
        jnp.full((maxiter + 1,), jnp.nan, dtype).at[0].set(f0),
        jnp.full((maxiter + 1,), jnp.nan, dtype).at[0].set(gn0),
        jnp.full((maxiter + 1,), -1, jnp.int32).at[0].set(1),
    )
    finite0 = jnp.isfinite(f0) & _all_finite(g0)
    status0 = _first(
        (~finite0, Status.NON_FINITE),
        (gn0 <= gtol, Status.CONVERGED_GTOL),
        (maxiter == 0, Status.MAX_ITER),
        (maxfev <= 1, Status.MAX_FEV),
    )
    init = _Carry(
        params,
        rest,
        written0,
        opt_state,
        f0,
        g0,
        aux0,
        0 * one,
        one,
        one,
        status0,
        0 * one,
        (params, written0, f0, gn0, aux0),
        hist,
    )

    def body(c: _Carry) -> _Carry:
        fn = objective.value_fn(c.snap, args, kwargs)
        every = dict(value=c.value, grad=c.grad, value_fn=fn, obj_fn=fn)
        with _explain_missing_args(_CALL):
            updates, state = tx.update(
                c.grad, c.opt_state, c.params, **{k: every[k] for k in names}
            )
        state = _cast_like(state, c.opt_state)
        x = _cast_like(optax.apply_updates(c.params, updates), c.params)
        ls_fev, ls_jev = _linesearch_counts(state) or (0 * one, 0 * one)
        stored = _stored_value_and_grad(state, x)
        if reuse:
            f, g = stored  # type: ignore[misc]
            aux, written, ev = None, None, 0
        else:
            snap = c.written if stateful else c.snap
            f, g, aux, written = evaluate(x, snap)
            ev = 1
        # The decrease tests compare values on one snapshot: the line search's.
        f_ls = f if stored is None else jnp.asarray(stored[0], dtype)
        f, g = f.astype(dtype), _cast_like(g, c.grad)
        nfev, njev = c.nfev + ls_fev + ev, c.njev + ls_jev + ev
        gn = _inf_norm(g, dtype)
        finite = _all_finite(x) & jnp.isfinite(f) & _all_finite(g)
        lr = _learning_rate(state, dtype)
        ls_failed = (
            _linesearch_failed(state, lr, f_ls, c.value) if has_ls else jnp.bool_(False)
        )
        fails = jnp.where(ls_failed, c.fails + 1, 0)
        accept = finite & ~ls_failed
        nit = c.nit + accept.astype(jnp.int32)
        rel = (c.value - f_ls) / jnp.maximum(
            jnp.maximum(jnp.abs(c.value), jnp.abs(f_ls)), 1
        )
        stop = _host_step(run_id, accept, nit, f, gn, lr, nfev) if hosted else False
        status = _first(
            (~finite, Status.NON_FINITE),
            (fails >= max_fails, Status.LINESEARCH_FAILED),
            (accept & (gn <= gtol), Status.CONVERGED_GTOL),
            (
                accept & (rel >= 0) & (rel <= ftol) if has_ls else False,
                Status.CONVERGED_FTOL,
            ),
            (accept & stop, Status.CALLBACK_STOP),
            (nit >= maxiter, Status.MAX_ITER),
            (nfev >= maxfev, Status.MAX_FEV),
        )
        new = _Carry(
            x,
            c.written if stateful else c.snap,
            written,
            state,
            f,
            g,
            aux,
            nit,
            nfev,
            njev,
            status,
            fails,
            c.best,
            c.history,
        )
        new = _select(accept, new, c)._replace(
            # No select: a non-finite iteration ends the loop, and the final
            # optimizer state is not returned (a select here copies the whole
            # L-BFGS memory every iteration).
            opt_state=state,
            nit=nit,
            nfev=nfev,
            njev=njev,
            status=status,
            fails=fails,
        )
        better = accept & (f < c.best[2])
        best = _select(better, (x, written, f, gn, aux), c.best)
        # A rejected iteration writes out of bounds (dropped): no read of the
        # buffers, so XLA updates them in place.
        i = jnp.where(accept, nit, maxiter + 1)
        history = tuple(
            h.at[i].set(v.astype(h.dtype), mode="drop")
            for h, v in zip(c.history, (f, gn, nfev), strict=True)
        )
        return new._replace(best=best, history=history)

    c = jax.lax.while_loop(lambda c: c.status == Status.RUNNING, body, init)
    last = (c.params, c.written, c.value, _inf_norm(c.grad, dtype), c.aux)
    x, written, fun, gnorm, aux = _select(is_success(c.status), last, c.best)
    nfev = c.nfev
    if objective.has_aux and reuse:
        fun, (aux, _) = objective.evaluate(x, rest, args, kwargs)
        nfev = nfev + 1
    stats = dict(
        fun=fun,
        grad_norm=gnorm,
        # one array: one device-to-host transfer for the integer fields
        counts=jnp.stack([c.status, c.nit, nfev, c.njev]).astype(jnp.int32),
        aux=aux if objective.has_aux else None,
        history=c.history,
    )
    return x, (written if stateful else rest), stats


def _first(*cases: tuple[Any, Status]) -> jax.Array:
    """The status of the first true condition, else ``RUNNING`` (jit-safe)."""
    out = jnp.asarray(Status.RUNNING, jnp.int32)
    for cond, status in reversed(cases):
        out = jnp.where(cond, jnp.asarray(status, jnp.int32), out)
    return out


def _inf_norm(tree: PyTree, dtype: Any) -> jax.Array:
    norms = [jnp.max(jnp.abs(x)).astype(dtype) for x in jax.tree.leaves(tree) if x.size]
    return jnp.max(jnp.stack(norms)) if norms else jnp.zeros((), dtype)


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    if jax.tree.structure(tree) != jax.tree.structure(like):
        return tree
    return jax.tree.map(
        lambda t, o: jnp.asarray(t, o.dtype) if hasattr(o, "dtype") else t, tree, like
    )


def _learning_rate(state: PyTree, dtype: Any) -> jax.Array:
    try:
        lr = optax.tree.get(state, "learning_rate")
    except (KeyError, ValueError):
        return jnp.asarray(jnp.nan, dtype)
    if lr is None or jnp.shape(lr) != ():
        return jnp.asarray(jnp.nan, dtype)
    return jnp.asarray(lr, dtype)


def _linesearch_failed(
    state: PyTree, lr: jax.Array, value: jax.Array, previous: jax.Array
) -> jax.Array:
    """Whether the last line search failed to decrease the loss.

    nnxopt's searches say so in ``status`` (``LINESEARCH_FAILED`` or
    ``NON_FINITE``: the zero step). optax's return a zero learning rate, or
    take an unsafe step that increases the loss.
    """
    try:
        code = optax.tree.get(state, "status")
    except (KeyError, ValueError):
        code = None
    if code is not None and jnp.shape(code) == ():
        bad = (Status.LINESEARCH_FAILED, Status.NON_FINITE)
        return (code == bad[0]) | (code == bad[1])
    return (lr == 0) | (value > previous)


def _resets_after_failure(state: PyTree) -> bool:
    def is_node(x: Any) -> bool:
        # nnxopt.lbfgs (lbfgs_info) and nnxopt.bfgs (bfgs_info) both reset.
        return hasattr(x, "_fields") and (
            hasattr(x, "lbfgs_info") or hasattr(x, "bfgs_info")
        )

    return any(is_node(x) for x in jax.tree.leaves(state, is_leaf=is_node))


def _linesearch_counts(state: PyTree) -> tuple[jax.Array, jax.Array] | None:
    """``(value evaluations, gradient evaluations)`` of the last line search.

    Value evaluations count every forward pass, also those made together with a
    gradient. nnxopt's line searches report ``info.num_value_evals`` and
    ``info.num_grad_evals`` (evaluated together, except ``backtracking``, whose
    one gradient is a separate evaluation). optax's zoom evaluates value and gradient at each of
    its ``num_linesearch_steps``; optax's backtracking evaluates the value at each
    step and, with ``store_grad=True``, the gradient once at the accepted step.
    ``None`` if the transform has no line search.
    """
    from optax._src.linesearch import ScaleByBacktrackingLinesearchState as Bt

    def is_ls(x: Any) -> bool:
        return isinstance(x, tuple) and hasattr(x, "_fields") and hasattr(x, "info")

    for node in jax.tree.leaves(state, is_leaf=is_ls):
        if not is_ls(node):
            continue
        info = node.info
        i32 = functools.partial(jnp.asarray, dtype=jnp.int32)
        if hasattr(info, "num_value_evals") and hasattr(info, "num_grad_evals"):
            nv, ng = i32(info.num_value_evals), i32(info.num_grad_evals)
            if type(node).__name__ == "BacktrackingState":
                return nv + ng, ng  # its gradient is a separate value-and-grad
            return nv, ng
        if hasattr(info, "num_linesearch_steps"):
            n = i32(info.num_linesearch_steps)
            if isinstance(node, Bt):
                return n, i32(node.grad is not None)
            return n, n
    return None


# ---------------------------------------------------------------------------
# Host side: callback and progress bar, reached through io_callback.


@dataclasses.dataclass
class _Run:
    callback: Callable[[MinimizeInfo], Any] | None
    bar: Any


_RUNS: dict[int, _Run] = {}
_RUN_IDS = itertools.count(1)


def _host_step(run_id, accept, nit, f, gn, lr, nfev) -> jax.Array:
    return io_callback(
        _on_host,
        jax.ShapeDtypeStruct((), jnp.bool_),
        run_id,
        accept,
        nit,
        f,
        gn,
        lr,
        nfev,
        ordered=True,
    )


def _on_host(run_id, accept, nit, f, gn, lr, nfev) -> np.bool_:
    run = _RUNS.get(int(run_id))
    if run is None or not bool(accept):
        return np.bool_(False)
    info = MinimizeInfo(int(nit), float(f), float(gn), float(lr), int(nfev))
    if run.bar is not None:
        run.bar.set_postfix(
            loss=f"{info.value:.4e}", gnorm=f"{info.grad_norm:.2e}", refresh=False
        )
        run.bar.update(1)
    stop = bool(run.callback(info)) if run.callback is not None else False
    return np.bool_(stop)


def _make_bar(total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError(
            f"{_CALL}(progress=True) needs tqdm, an optional dependency. Install "
            "it with `pip install 'nnxopt[progress]'` or pass progress=False."
        ) from err
    return tqdm(total=total, desc="minimize", unit="it", leave=True)


# ---------------------------------------------------------------------------
# Argument checks (at call time, never inside jit).


def _np_dtype(dtype: Any) -> Any:
    """``dtype`` as NumPy knows it; float64 only where JAX has it enabled."""
    return jax.dtypes.canonicalize_dtype(dtype)  # no array built, nothing dispatched


def _lowest_precision(params: PyTree) -> Any:
    dtypes = {jnp.dtype(jnp.result_type(x)) for x in jax.tree.leaves(params)}
    return max(dtypes, key=lambda d: float(jnp.finfo(d).eps))


def _check_tol(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{_CALL}: {name} must be a number; got {value!r}.") from None
    if not value >= 0:
        raise ValueError(
            f"{_CALL}: {name} must be >= 0 (0 disables it); got {value!r}."
        )
    return value


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{_CALL}: {name} must be an int; got {value!r}.")
    if value < low:
        raise ValueError(f"{_CALL}: {name} must be >= {low}; got {value!r}.")
    return int(value)
