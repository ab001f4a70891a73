"""``nnxopt.solve``: the pure solver on pytrees, and its ``Solution``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _batch, _bounds, _implicit, _loop
from ._loop import MinimizeHistory, MinimizeInfo
from ._runner import CONTINUE, FRESH, RESUME, Runner, compiled_run, signature
from ._sharding import check_placement, placed_as_given
from ._solver import (
    DEFAULT_MAXFEV,
    DEFAULT_MAXITER,
    Solver,
    SolverState,
    check_options,
    default_tols,
    strong_params,
)
from ._status import Status, is_success
from ._tree import describe, lowest_precision, partition

PyTree = Any
_CALL = "nnxopt.solve"
_FLOATS = frozenset(
    jnp.dtype(d) for d in (jnp.float64, jnp.float32, jnp.float16, jnp.bfloat16)
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Solution:
    """The outcome of :func:`nnxopt.solve`: a pytree (it passes through ``jit``
    and ``vmap``); field names follow scipy's ``OptimizeResult``.

    Attributes:
        params: the solution, shaped like the starting ``params``: the last
            iterate on success or interrupt, else the best accepted one.
        state: the :class:`SolverState` to resume from (``state=sol.state``).
        fun: the loss at ``params``.
        grad_norm: the infinity norm of the gradient there.
        nit, nfev, njev: iterations and evaluations of the whole solve
            (``int32`` arrays; a resumed solve keeps counting).
        success: whether it converged (``gtol`` or ``ftol``), a bool array.
        status: an ``int32`` :class:`nnxopt.Status` code (``Status(int(...))``).
        aux: the auxiliary output at ``params`` (``has_aux=True``), else None.
        history: per-iteration values of this call (:class:`MinimizeHistory`),
            None from :meth:`from_state`.

    Example:
        :func:`nnxopt.solve`'s example returns one; all its fields on one
        solve: ``docs/api/results.md`` (*States and results, by example*).

        >>> import dataclasses, nnxopt
        >>> names = [f.name for f in dataclasses.fields(nnxopt.Solution)]
        >>> tuple(names[:5])
        ('params', 'state', 'fun', 'grad_norm', 'nit')
    """

    params: PyTree
    state: SolverState
    fun: jax.Array
    grad_norm: jax.Array
    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    success: jax.Array
    status: jax.Array
    aux: Any = None
    history: MinimizeHistory | None = None

    @property
    def message(self) -> str:
        """The explanation of ``status`` (outside ``jit``/``vmap`` only)."""
        return Status(int(self.status)).message

    @classmethod
    def from_state(
        cls,
        solver: Solver,
        state: SolverState,
        *args: Any,
        history: MinimizeHistory | None = None,
        **kwargs: Any,
    ) -> Solution:
        """The solution a solve ending in ``state`` returns (for your own loop)."""
        return cls.build(state, solver.final(state, *args, **kwargs), history)

    @classmethod
    def build(
        cls, state: SolverState, final: tuple, history: MinimizeHistory | None
    ) -> Solution:
        """The solution from ``state`` and :meth:`Solver.final`'s output."""
        x, _, fun, gnorm, aux, nfev = final
        return cls(
            params=x,
            state=state,
            fun=fun,
            grad_norm=gnorm,
            nit=state.nit,
            nfev=nfev,
            njev=state.njev,
            success=is_success(state.status),
            status=state.status,
            aux=aux,
            history=history,
        )


def solve(
    fun: Callable[..., Any],
    params: PyTree,
    *args: Any,
    tx: optax.GradientTransformation | None = None,
    bounds: tuple[Any, Any] | None = None,
    gtol: float | None = None,
    ftol: float | None = None,
    maxiter: int | None = None,
    maxfev: int | None = None,
    has_aux: bool = False,
    callback: Callable[[MinimizeInfo], Any] | None = None,
    progress: bool = False,
    state: SolverState | None = None,
    implicit: _implicit.ImplicitDiff | None = None,
    history: int | None = None,
    batch_stages: int = 1,
    **kwargs: Any,
) -> Solution:
    """Minimize ``fun(params, *args, **kwargs)`` over a pytree of floating arrays.

    The pure counterpart of :func:`nnxopt.minimize`, with the same stopping
    rules, statuses and evaluation counts, for any pytree (a dict of
    hyperparameters, a tuple of arrays): one compiled ``lax.while_loop`` over
    :class:`Solver`'s ``step``, compiled once per (``fun``, structure, shapes,
    ``maxiter``, transform structure). It is pure: ``jax.jit`` and ``jax.vmap``
    of ``solve`` work (under them there is no Ctrl-C poll); under ``vmap`` each
    member stops at its own convergence with its own counts and status
    (``callback`` and ``progress`` are refused there). ``jax.grad``,
    ``jax.vjp`` and ``jax.jvp`` of the solution with respect to ``args`` and
    ``kwargs`` use the implicit function theorem at the solution (see
    :class:`nnxopt.ImplicitDiff`), never the loop.

    Resume: ``solve(fun, sol.params, *args, state=sol.state)`` continues exactly
    where ``sol`` stopped (L-BFGS memory, line-search state, counters): two
    calls of 20 iterations equal one of 40. ``maxiter`` and ``maxfev`` are
    budgets of the whole solve. Ctrl-C stops an eager solve within a fraction of
    a second with status ``INTERRUPTED`` and a resumable state.

    Args:
        fun: ``fun(params, *args, **kwargs)`` returning a real scalar, or
            ``(scalar, aux)`` with ``has_aux=True``. Keyed by identity, like
            ``jax.jit``: define it once and pass data as arguments.
        params: the starting point, a pytree of floating arrays.
        *args: arrays (traced) and other values (static, hashable) for ``fun``.
        tx: any optax transform; ``None`` means ``nnxopt.lbfgs()`` (with
            ``bounds``, ``nnxopt.lbfgsb()``).
        bounds: ``(lower, upper)`` box constraints (L-BFGS-B): each a scalar,
            ``None`` or a pytree with the paths of ``params`` (``None`` leaves
            and ``±inf`` free; ``lower == upper`` fixes a value; integer bounds
            are cast). The start is projected into the box, the loss is never
            evaluated outside it and ``gtol`` applies to the projected
            gradient. Bounds infinite everywhere give the unbounded solve.
            See the bounds guide.
        gtol: gradient tolerance (infinity norm); default :func:`default_tols`.
        ftol: relative-decrease tolerance: stop when an accepted finite step
            decreased the loss by a relative ``0 < decrease <= ftol`` (``0``
            disables it); default :func:`default_tols`. A step that leaves the
            loss unchanged is a failed line search, never convergence.
        maxiter: iterations of the whole solve (default 15000, scipy's).
        maxfev: loss evaluations of the whole solve (default 15000).
        has_aux: whether ``fun`` returns ``(loss, aux)``.
        callback: ``callback(info: MinimizeInfo)`` after each accepted
            iteration, on the host; returning ``True`` stops the solve. If it
            raises, the solve stops there and the exception is re-raised
            after the loop (with a note naming the iteration).
        progress: show a tqdm progress bar (the ``progress`` extra).
        history: entries of ``sol.history``: ``None`` (default) one per
            iteration, ``min(maxiter, 100000) + 1``; an int ``k >= 1`` keeps
            the first ``k - 1`` iterates and the latest in the last entry
            (``history=1``: the latest only). The buffer is per call (per
            member under ``vmap``), so large batches of small solves pass a
            small one.
        batch_stages: under ``jax.vmap``, run the batch in up to this many
            stages: each runs until at most half of its members still run,
            which then go on gathered into a batch half the size (down to 8
            members), so finished members stop computing. Results are those
            of one stage, bit for bit; each stage compiles the step once
            more. ``1`` (default): every member computes until the slowest is
            done. Unbatched, it changes nothing. For batches whose members
            need very different numbers of iterations, e.g. ``3``: a
            256-member batch of quadratics took 1.5-1.9x less time per call (see
            ``docs/batched_and_implicit.md``).
        state: a ``Solution.state`` to resume from; ``params`` must then have
            the structure, shapes and dtypes of ``state.params``, whose values
            are used.
        implicit: how ``jax.grad``/``jax.jvp`` differentiate the solution with
            respect to ``args``/``kwargs``: an :class:`nnxopt.ImplicitDiff`
            (conjugate gradients on Hessian-vector products at the solution);
            ``None``: its defaults.
        **kwargs: keyword arguments of ``fun``.

    Returns:
        A :class:`Solution`.

    Raises:
        TypeError: wrong types: ``fun`` not callable, non-floating leaves, a
            ``Solution`` passed as ``params``, a ``state`` of another problem.
            A ``tx`` that cannot honour ``bounds``.
        ValueError: negative tolerances or limits, ``maxiter`` below the
            iterations ``state`` already made; bounds that do not match
            ``params``, ``lower > upper``, a non-finite projected start.

    Example:
        >>> import jax.numpy as jnp, nnxopt
        >>> def fun(p, y):
        ...     return jnp.sum((p["a"] * jnp.arange(3.0) + p["b"] - y) ** 2)
        >>> y = jnp.array([1.0, 3.0, 5.0])
        >>> sol = nnxopt.solve(fun, {"a": 0.0, "b": 0.0}, y)
        >>> nnxopt.Status(int(sol.status)).name
        'CONVERGED_GTOL'
        >>> print(jnp.round(sol.params["a"], 4), jnp.round(sol.params["b"], 4))
        2.0 1.0
    """
    if not callable(fun):
        raise TypeError(f"{_CALL}: fun must be callable; got {fun!r}.")
    params = check_params(_CALL, params)
    tx, box = _bounds.setup(_CALL, params, bounds, tx)
    _batch.check_static(
        _CALL, tx=tx, gtol=gtol, ftol=ftol, maxiter=maxiter, maxfev=maxfev
    )
    if implicit is not None:
        implicit = implicit.check(_CALL)
    differentiable, arg_static = partition((args, kwargs))
    # The loop gets the bounds beside the arguments (as arrays), and runs on
    # values without derivatives; `attach` adds the implicit ones.
    dynamic, static = partition((args, _bounds.attach(kwargs, box)))
    params, dynamic = _implicit.detach((params, dynamic))
    if callback is not None or progress:
        params, dynamic = _batch.forbid_batching(_CALL, (params, dynamic))
    run = compiled_run(
        _CALL,
        ("solve", fun, has_aux),
        functools.partial(Solver, fun, has_aux=has_aux, call=_CALL),
        tx,
        static,
        maxiter,
        history=history,
        batch_stages=batch_stages,
    )
    solution, _, _, error = launch(
        run, params, state, dynamic,
        call=_CALL, gtol=gtol, ftol=ftol, maxiter=maxiter, maxfev=maxfev,
        callback=callback, progress=progress,
    )  # fmt: skip
    if error is not None:
        error.add_note(
            f"{_CALL}: raised by the callback after iteration "
            f"{int(solution.nit)}; the solve stopped there (pass state= of an "
            "earlier solution to resume)."
        )
        raise error
    return _implicit.attach(
        solution, fun, differentiable, arg_static,
        has_aux=has_aux, options=implicit, call=_CALL, bounded=box is not None,
    )  # fmt: skip


# ---------------------------------------------------------------------------
# The host side of a compiled run (shared with ``minimize``).


#: Seconds per loop step of each compiled loop, measured on its last run:
#: sizes the first chunk of the next (warm) call.
_SECONDS_PER_STEP: dict[int, float] = {}


def launch(
    make: Callable[[bool], Runner],
    params: PyTree,
    state: SolverState | None,
    dynamic: list,
    *,
    call: str,
    gtol: Any,
    ftol: Any,
    maxiter: int | None,
    maxfev: int | None,
    callback: Any,
    progress: bool,
) -> tuple[Solution, PyTree, Any, Exception | None]:
    """Validate, then run the compiled solve with its host side (callback,
    progress bar, Ctrl-C) around it; return ``(solution, written, counts,
    error)``, ``error`` being the exception the callback raised (the solve
    stopped there with ``CALLBACK_STOP``; the caller re-raises it)."""
    check_options(call, gtol, ftol, maxiter, maxfev)
    if callback is not None and not callable(callback):
        raise TypeError(
            f"{call}: callback must be a function `callback(info) -> bool | None`; "
            f"got {callback!r}."
        )
    if state is not None:
        state = check_state(call, state, params, maxiter)
    check_placement(call, params, dynamic)
    dtype = lowest_precision(params)
    # Under jit/vmap (any traced input) the host cannot drive chunks.
    traced = any(
        isinstance(x, jax.core.Tracer)
        for x in jax.tree.leaves((params, state, dynamic))
    )
    runner = make(callback is not None or progress)
    # NumPy scalars: jit transfers them in its fast path, no dispatch.
    d_gtol, d_ftol = default_tols(dtype)
    np_dtype = jax.dtypes.canonicalize_dtype(dtype)
    limits = (
        np.asarray(d_gtol if gtol is None else gtol, np_dtype),
        np.asarray(d_ftol if ftol is None else ftol, np_dtype),
        np.int32(DEFAULT_MAXFEV if maxfev is None else maxfev),
    )
    total = DEFAULT_MAXITER if maxiter is None else maxiter
    bar = _make_bar(call, total) if progress else None
    run_id = np.int32(_loop.register(_loop.HostRun(callback, bar)))
    interruptible = not traced and _loop.INTERRUPT.available()
    try:
        with _loop.INTERRUPT if interruptible else contextlib.nullcontext():
            first = _first_call(runner, params, state, dynamic, limits, traced)
            if interruptible:
                out = _chunks(runner, first, dynamic, limits, run_id)
            else:
                out = runner.run(
                    *first, dynamic, limits, np.int32(_loop.NO_LIMIT), run_id
                )
        state, history, (x, written, fun, gnorm, aux, nfev, success, counts) = out
        x = placed_as_given(x, params)
        solution = Solution(
            params=x, state=state, fun=fun, grad_norm=gnorm, nit=state.nit,
            nfev=nfev, njev=state.njev, success=success, status=state.status,
            aux=aux, history=history,
        )  # fmt: skip
        return solution, written, counts, _loop.RUNS[int(run_id)].error
    finally:
        _loop.RUNS.pop(int(run_id), None)
        if bar is not None:
            bar.close()


def _first_call(
    runner: Runner,
    params: PyTree,
    state: SolverState | None,
    dynamic: list,
    limits: tuple,
    traced: bool,
) -> tuple:
    """The leading arguments ``(mode, params, state, history, nit0)`` of the
    first :attr:`Runner.run` call of a solve."""
    placeholders = None
    if not traced:
        placeholders, _ = runner.shapes(signature(params, (dynamic, limits)))
    if placeholders is None:  # a large state, or under jit/vmap: start first
        state, history = runner.start(params, state, dynamic, limits)
        return CONTINUE, params, state, history, state.nit
    empty_state, empty_history = placeholders
    if state is None:
        return FRESH, params, empty_state, empty_history, np.int32(0)
    return RESUME, params, state, empty_history, np.int32(0)


def _chunks(
    runner: Runner, first: tuple, dynamic: list, limits: tuple, run_id: np.int32
) -> tuple[SolverState, MinimizeHistory, tuple]:
    """Run the loop in chunks of about ``CHUNK_SECONDS``, stopping on Ctrl-C."""
    key = id(runner.run)
    rate = _SECONDS_PER_STEP.get(key)
    # Unknown rate (the first call compiles): grow from one step.
    limit, measured = (1, False) if rate is None else (_loop.chunk_steps(rate), True)
    args = first
    while True:
        t0 = time.perf_counter()
        state, history, out = runner.run(
            *args, dynamic, limits, np.int32(limit), run_id
        )
        counts = np.asarray(out[-1])  # waits for the chunk
        status = int(counts[0])
        elapsed = time.perf_counter() - t0
        if status != Status.RUNNING or _loop.INTERRUPT.hit:
            break
        if measured:  # a full chunk without compilation: a clean rate
            _SECONDS_PER_STEP[key] = elapsed / limit
        measured = True
        limit = min(4 * limit, _loop.chunk_steps(elapsed / limit))
        args = (CONTINUE, args[1], state, history, np.int32(counts[4]))
    if status == Status.RUNNING:  # Ctrl-C between chunks: stop here
        state = state._replace(status=jnp.asarray(Status.INTERRUPTED, jnp.int32))
        return runner.run(
            CONTINUE, args[1], state, history, np.int32(counts[4]), dynamic, limits,
            np.int32(0), run_id,
        )  # fmt: skip
    return state, history, out


def _make_bar(call: str, total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError(
            f"{call}(progress=True) needs tqdm, an optional dependency. Install "
            "it with `pip install 'nnxopt[progress]'` or pass progress=False."
        ) from err
    return tqdm(total=total, desc=call.rsplit(".", 1)[-1], unit="it", leave=True)


# ---------------------------------------------------------------------------
# Argument checks (at call time, never inside jit).


def check_params(call: str, params: PyTree, name: str = "params") -> PyTree:
    """Check that ``params`` is a non-empty pytree of floating arrays."""
    if isinstance(params, Solution):
        raise TypeError(
            f"{call}: {name} is a Solution; pass its parameters, and its state "
            f"to resume: `{call}(fun, sol.params, ..., state=sol.state)`."
        )
    if isinstance(params, SolverState):
        raise TypeError(
            f"{call}: {name} is a SolverState; pass the parameters as {name} and "
            f"the state as `state=`: `{call}(fun, sol.params, ..., state=sol.state)`."
        )
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{call}: {name} has no array leaves; got {params!r}.")
    if all(
        isinstance(x, jax.Array) and not x.weak_type and x.dtype in _FLOATS
        for x in leaves
    ):
        return params  # the common case, checked cheaply
    params = strong_params(params)
    bad = {
        jax.tree_util.keystr(path) or "<root>": str(jnp.result_type(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
    }
    if bad:
        raise TypeError(
            f"{call}: every leaf of {name} must be a real floating-point array; "
            f"these are not: {bad!r}. Convert them, e.g. "
            "`jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)`, or "
            "pass integer data through *args instead."
        )
    return params


def check_state(
    call: str, state: Any, params: PyTree, maxiter: int | None
) -> SolverState:
    """Check that ``state`` belongs to this problem (structure, shapes, dtypes)."""
    if not isinstance(state, SolverState):
        hint = " (pass sol.state, not sol)" if isinstance(state, Solution) else ""
        raise TypeError(
            f"{call}: state must be the SolverState of an earlier solve"
            f"{hint}; got {type(state).__name__}."
        )
    want = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), params)
    got = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state.params)
    if jax.tree.structure(params) != jax.tree.structure(state.params) or want != got:
        raise TypeError(
            f"{call}: state= comes from another problem: its parameters are "
            f"{describe(state.params)} but params is {describe(params)}. Pass the "
            "state of a solve of the same parameters (same structure, shapes and "
            "dtypes), or state=None to start afresh."
        )
    nit = state.nit
    if maxiter is not None and not isinstance(nit, jax.core.Tracer):
        done = int(np.asarray(nit))
        if maxiter < done:
            raise ValueError(
                f"{call}: maxiter={maxiter} is below the {done} iterations the "
                "given state= already made; maxiter is a budget of the whole "
                f"solve: pass maxiter >= {done} (e.g. {done} + the iterations to "
                "add)."
            )
    return state
