"""The solve loop: one ``lax.while_loop`` over ``Solver.step``.

Around the pure step it adds what only a running solve has: the per-call
history, the user's callback and progress bar, and Ctrl-C. One loop serves
``nnxopt.solve`` and ``nnxopt.minimize``.

Ctrl-C: a compiled loop never returns to Python, so Python's SIGINT handler
cannot run until it ends. An eager solve therefore runs the loop in *chunks*:
each call of the compiled loop makes at most ``limit`` steps and returns the
(resumable) state, and the host, between chunks, runs the SIGINT handler nnxopt
installed for the solve. Chunks are sized from the measured time per step to
last about ``CHUNK_SECONDS`` (a warm solve shorter than that is one call; the
first, compiling call grows its chunks from one step), so a Ctrl-C stops the
solve within about that time, with no host callback inside the loop. Chunk
boundaries are exact resumes: the iterates are those of one uninterrupted loop.
Solves traced by ``jax.jit`` or ``jax.vmap`` (and those started off the main
thread or under another SIGINT handler) run in one chunk and are not
interruptible.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from . import _batch
from ._solver import Solver, SolverState
from ._status import Status

PyTree = Any
_INT = jnp.int32
#: Target wall time of one chunk of an interruptible solve.
CHUNK_SECONDS = 0.25
#: The most iterations a history records (past them its last entry holds the
#: latest iterate), so that a huge ``maxiter`` does not allocate a huge
#: buffer: 2 MB in float64.
MAX_HISTORY = 100_000
#: ``limit`` of a solve that runs in one chunk.
NO_LIMIT = 2**31 - 1


class MinimizeHistory(NamedTuple):
    """Per-iteration trace of one call, on device.

    Entry ``k`` is the ``k``-th iterate accepted by this call (``0`` is its
    starting point, the resumed point when ``state=`` was given). Arrays have
    length ``min(maxiter, MAX_HISTORY) + 1`` (``MAX_HISTORY`` is 100,000: a
    huge ``maxiter`` does not allocate a huge buffer; past it, the last entry
    holds the latest iterate), or the ``history=`` given to ``solve`` or
    ``minimize`` (``history=1``: the latest iterate only, for large batches of
    small solves, where the buffer is per member); unused entries are ``nan``
    (and ``-1`` for ``nfev``).
    Use :meth:`trim` to drop the padding.

    Attributes:
        value: the loss at each iterate.
        grad_norm: the infinity norm of the gradient at each iterate.
        nfev: the cumulative number of loss evaluations when the iterate was reached.

    Example:
        ``sol.history`` after :func:`nnxopt.solve`, ``result.history`` after
        :func:`nnxopt.minimize`; ``trim`` keeps the entries written:

        >>> import numpy as np, nnxopt
        >>> history = nnxopt.MinimizeHistory(
        ...     value=np.array([6.0, 1.5, 0.25, np.nan]),
        ...     grad_norm=np.array([6.0, 2.0, 0.5, np.nan]),
        ...     nfev=np.array([1, 2, 4, -1]),
        ... )
        >>> history.trim().value
        array([6.  , 1.5 , 0.25])
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


class MinimizeInfo(NamedTuple):
    """What ``callback(info)`` receives after each accepted iteration.

    Attributes:
        iteration: the iteration number (``1`` after the first iteration).
        value: the loss at the new iterate.
        grad_norm: the infinity norm of the gradient at the new iterate.
        learning_rate: the step size the line search accepted (``nan`` if the
            transform reports none).
        nfev: the cumulative number of loss evaluations.

    Example:
        A callback for ``solve(..., callback=report)`` or
        ``minimize(..., callback=report)``, called here by hand:

        >>> import nnxopt
        >>> def report(info):
        ...     print(f"{info.iteration}: loss {info.value:.3g}, {info.nfev} evaluations")
        >>> report(nnxopt.MinimizeInfo(3, 0.25, 0.5, 1.0, 4))
        3: loss 0.25, 4 evaluations
    """

    iteration: int
    value: float
    grad_norm: float
    learning_rate: float
    nfev: int


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """Static options of the loop (part of the compilation key).

    Attributes:
        maxiter: the solver's ``maxiter`` (it sets the history's length).
        hosted: a callback or progress bar runs on the host each iteration.
        history: the length of the history.
        stages: ``batch_stages`` (see :func:`nnxopt.solve`).
    """

    maxiter: int
    hosted: bool = False
    history: int = 0
    stages: int = 1

    @classmethod
    def of(
        cls, maxiter: int, hosted: bool, history: int | None = None, stages: int = 1
    ) -> LoopOptions:
        """The options of a loop; the history has ``history`` entries, by
        default ``min(maxiter, MAX_HISTORY) + 1``."""
        length = min(maxiter, MAX_HISTORY) + 1 if history is None else history
        return cls(maxiter, hosted, length, stages)


def check_history(call: str, history: Any) -> None:
    """Check ``history=`` (``None`` or an int >= 1) before tracing."""
    if history is None:
        return
    if isinstance(history, bool) or not isinstance(history, int | np.integer):
        raise TypeError(
            f"{call}: history must be None (one entry per iteration, up to "
            f"{MAX_HISTORY:,}) or an int >= 1 (the number of entries); got "
            f"{history!r}."
        )
    if history < 1:
        raise ValueError(
            f"{call}: history must be >= 1 (history=1 keeps only the latest "
            f"iterate); got {history!r}."
        )


def check_batch_stages(call: str, batch_stages: Any) -> None:
    """Check ``batch_stages=`` (an int >= 1) before tracing."""
    if isinstance(batch_stages, bool) or not isinstance(batch_stages, int | np.integer):
        raise TypeError(
            f"{call}: batch_stages must be an int >= 1 (1: one stage, the "
            f"default; e.g. 3 under jax.vmap); got {batch_stages!r}."
        )
    if batch_stages < 1:
        raise ValueError(
            f"{call}: batch_stages must be >= 1 (1 runs the whole batch until "
            f"its slowest member is done); got {batch_stages!r}."
        )


class _Carry(NamedTuple):
    state: SolverState
    history: tuple
    steps: jax.Array
    nfev: jax.Array  # at the last accepted iterate


def new_history(state: SolverState, n: int) -> MinimizeHistory:
    """The history of a call starting at ``state`` (entry 0), of length ``n``."""
    dtype = state.value.dtype
    return MinimizeHistory(
        jnp.full((n,), jnp.nan, dtype).at[0].set(state.value),
        jnp.full((n,), jnp.nan, dtype).at[0].set(state.grad_norm),
        jnp.full((n,), -1, _INT).at[0].set(state.nfev),
    )


def chunk_steps(seconds_per_step: float) -> int:
    """Steps of a chunk lasting about ``CHUNK_SECONDS`` at this rate (>= 1)."""
    return int(min(max(CHUNK_SECONDS / max(seconds_per_step, 1e-9), 1), NO_LIMIT))


def run(
    solver: Solver,
    state: SolverState,
    history: MinimizeHistory,
    nit0: jax.Array,
    args: tuple,
    kwargs: dict,
    options: LoopOptions,
    limit: jax.Array,
    run_id: jax.Array,
) -> tuple[SolverState, MinimizeHistory]:
    """Step ``state`` until the solver terminates or ``limit`` steps were made.

    ``nit0`` is the iteration count at the start of the call: accepted
    iteration ``nit`` is history entry ``nit - nit0``.
    """
    n = options.history

    def body(c: _Carry) -> _Carry:
        hosted = run_id if options.hosted else None
        s, accept = _advance(solver, c.state, args, kwargs, hosted)
        return _record(c, s, accept, nit0, n)

    def cond(c: _Carry) -> jax.Array:
        # any member running (unbatched): no per-member select of the history
        return _batch.any_member(~solver.terminate(c.state)) & (c.steps < limit)

    nfev = history.nfev[jnp.minimum(state.nit - nit0, n - 1)]
    if options.stages > 1 and not options.hosted:
        return _staged(solver, state, history, nit0, nfev, args, kwargs, options, limit)
    init = _Carry(state, tuple(history), jnp.zeros((), _INT), nfev)
    out = jax.lax.while_loop(cond, body, init)
    return out.state, MinimizeHistory(*out.history)


def _advance(
    solver: Solver, s_old: SolverState, args: tuple, kwargs: dict, run_id: Any = None
) -> tuple[SolverState, jax.Array]:
    """One step of the loop from ``s_old``: ``(state, accepted)``; with a
    ``run_id`` (a hosted loop), the callback may stop the solve."""
    # True unbatched; under vmap, False for the members already done
    running = ~solver.terminate(s_old)
    s = solver.step(s_old, *args, **kwargs)
    accept = (s.nit > s_old.nit) & running
    status = s.status
    if run_id is not None:
        stop = _host_step(run_id, accept, s)
        stoppable = (
            (status == Status.RUNNING)
            | (status == Status.MAX_ITER)
            | (status == Status.MAX_FEV)
        )
        status = jnp.where(accept & stop & stoppable, Status.CALLBACK_STOP, status)
    # Under vmap the members already done keep their state (selected).
    s = _batch.keep_running(running, s._replace(status=status.astype(_INT)), s_old)
    return s, accept


def _record(
    c: _Carry, s: SolverState, accept: jax.Array, nit0: jax.Array, n: int,
    rows: Any = None,
) -> _Carry:  # fmt: skip
    """``c`` after the step to ``s``, ``n`` the history's length.

    Entry ``nit - nit0`` always holds the current iterate (a rejected step
    rewrites it with the same values, nfev included): an unconditional
    ``dynamic_update_slice``, which XLA does in place; past the end of the
    history, the last entry holds the latest iterate. ``rows``: the members
    (rows of a batched history) that ``s`` holds, in a staged batch.
    """
    i = jnp.minimum(s.nit - nit0, n - 1)
    nfev = jnp.where(accept, s.nfev, c.nfev)
    values = (s.value, s.grad_norm, nfev)
    if rows is None:
        history = tuple(
            jax.lax.dynamic_update_index_in_dim(h, v.astype(h.dtype), i, 0)
            for h, v in zip(c.history, values, strict=True)
        )
    else:
        history = tuple(
            h.at[rows, i].set(v.astype(h.dtype))
            for h, v in zip(c.history, values, strict=True)
        )
    return _Carry(s, history, c.steps + 1, nfev)


#: A staged batch stops halving at this many members.
MIN_STAGE = 8


def stage_sizes(members: int, stages: int) -> list[int]:
    """The batch size of each stage: halved (rounded up) from ``members``, at
    most ``stages`` of them, none below ``MIN_STAGE`` (unless the first)."""
    sizes = [members]
    while len(sizes) < stages and (sizes[-1] + 1) // 2 >= MIN_STAGE:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _staged(
    solver: Solver,
    state: SolverState,
    history: MinimizeHistory,
    nit0: jax.Array,
    nfev: jax.Array,
    args: tuple,
    kwargs: dict,
    options: LoopOptions,
    limit: jax.Array,
) -> tuple[SolverState, MinimizeHistory]:
    """The loop of :func:`run` in stages that halve the batch under ``vmap``
    (``batch_stages``); unbatched, the same loop as :func:`run`'s.

    The step and the termination test are traced once, per member, into
    jaxprs whose captured values (the arguments, whatever ``fun`` closes over)
    become explicit operands of a ``custom_vmap`` function, :class:`_Stages`:
    unbatched it is the plain loop; its batching rule runs stage after stage,
    each gathering the members still running into a smaller batch.
    """

    def advance(s_old: SolverState) -> tuple[SolverState, jax.Array]:
        return _advance(solver, s_old, args, kwargs)

    def running(s: SolverState) -> jax.Array:
        return ~solver.terminate(s)

    stages = _Stages(
        jax.make_jaxpr(advance)(state),
        jax.make_jaxpr(running)(state),
        jax.tree.structure(state),
        options,
    )
    loop = jax.custom_batching.custom_vmap(stages.plain)
    loop.def_vmap(stages.rule)
    s, h = loop(
        stages.step_jaxpr.consts, stages.running_jaxpr.consts,
        state, tuple(history), nit0, nfev, limit,
    )  # fmt: skip
    return s, MinimizeHistory(*h)


@dataclasses.dataclass(frozen=True)
class _Stages:
    """The staged loop of one solve (see :func:`_staged`): ``plain`` and its
    batching ``rule`` take the jaxprs' captured values as operands."""

    step_jaxpr: Any  # ClosedJaxpr: state -> (state, accept)
    running_jaxpr: Any  # ClosedJaxpr: state -> running
    treedef: Any
    options: LoopOptions

    def step(self, consts: list, s: SolverState) -> tuple[SolverState, jax.Array]:
        out = jax.core.eval_jaxpr(self.step_jaxpr.jaxpr, consts, *jax.tree.leaves(s))
        return jax.tree.unflatten(self.treedef, out[:-1]), out[-1]

    def running(self, consts: list, s: SolverState) -> jax.Array:
        return jax.core.eval_jaxpr(
            self.running_jaxpr.jaxpr, consts, *jax.tree.leaves(s)
        )[0]

    def plain(
        self, step_c: list, run_c: list, state: SolverState, history: tuple,
        nit0: jax.Array, nfev: jax.Array, limit: jax.Array,
    ) -> tuple[SolverState, tuple]:  # fmt: skip
        def body(c: _Carry) -> _Carry:
            s, accept = self.step(step_c, c.state)
            return _record(c, s, accept, nit0, self.options.history)

        def cond(c: _Carry) -> jax.Array:
            return _batch.any_member(self.running(run_c, c.state)) & (c.steps < limit)

        init = _Carry(state, history, jnp.zeros((), _INT), nfev)
        out = jax.lax.while_loop(cond, body, init)
        return out.state, out.history

    def rule(
        self, members: int, in_batched: list, step_c: list, run_c: list,
        state: SolverState, history: tuple, nit0: jax.Array, nfev: jax.Array,
        limit: jax.Array,
    ) -> tuple:  # fmt: skip
        operands = (step_c, run_c, state, history, nit0, nfev, limit)
        sizes = stage_sizes(members, self.options.stages)
        if len(sizes) == 1 or in_batched[-1]:  # one stage: the plain loop, vmapped
            axes = jax.tree.map(lambda b: 0 if b else None, tuple(in_batched))
            out = jax.vmap(self.plain, in_axes=axes)(*operands)
            return out, jax.tree.map(lambda _: True, out)

        def full(x: jax.Array, b: bool) -> jax.Array:
            return x if b else jnp.broadcast_to(x, (members, *jnp.shape(x)))

        _, _, state_b, history_b, nit0_b, nfev_b, _ = in_batched
        c = _Carry(
            jax.tree.map(full, state, state_b),
            tuple(jax.tree.map(full, history, history_b)),
            jnp.zeros((), _INT),
            full(nfev, nfev_b),
        )
        nit0 = full(nit0, nit0_b)
        batched = (in_batched[0], in_batched[1])
        rows = None  # the members of the stage: all of them at first
        for after in [*sizes[1:], 0]:
            c = self._stage(c, (step_c, run_c), batched, nit0, rows, after, limit)
            if after:
                order = self._vrunning(run_c, batched[1], c.state)
                rows = jnp.argsort(~order, stable=True)[:after]
        return (c.state, c.history), (
            jax.tree.map(lambda _: True, c.state),
            (True,) * 3,
        )

    def _vrunning(self, run_c: list, run_b: list, s: SolverState) -> jax.Array:
        axes = ([0 if b else None for b in run_b], 0)
        return jax.vmap(self.running, in_axes=axes)(run_c, s)

    def _stage(
        self, c: _Carry, consts: tuple, batched: tuple, nit0: jax.Array,
        rows: Any, after: int, limit: jax.Array,
    ) -> _Carry:  # fmt: skip
        """Step the members ``rows`` (all: ``None``) of the full carry ``c``
        until at most ``after`` of them run; return the full carry."""

        def take(x: jax.Array, b: bool = True) -> jax.Array:
            return x[rows] if (b and rows is not None) else x

        step_c, run_c = (
            [take(x, b) for x, b in zip(xs, bs, strict=True)]
            for xs, bs in zip(consts, batched, strict=True)
        )
        step_axes = ([0 if b else None for b in batched[0]], 0)
        sub_nit0 = take(nit0)
        # the history rows of the stage's members (scattered: it stays full)
        at = jnp.arange(nit0.shape[0]) if rows is None else rows

        def body(sc: _Carry) -> _Carry:
            s, accept = jax.vmap(self.step, in_axes=step_axes)(step_c, sc.state)
            return _record(sc, s, accept, sub_nit0, self.options.history, at)

        def cond(sc: _Carry) -> jax.Array:
            count = jnp.sum(self._vrunning(run_c, batched[1], sc.state).astype(_INT))
            return (count > after) & (sc.steps < limit)

        sub = c._replace(state=jax.tree.map(take, c.state), nfev=take(c.nfev))
        sub = jax.lax.while_loop(cond, body, sub)
        if rows is None:
            return sub
        return sub._replace(
            state=jax.tree.map(lambda x, y: x.at[rows].set(y), c.state, sub.state),
            nfev=c.nfev.at[rows].set(sub.nfev),
        )


# ---------------------------------------------------------------------------
# Host side: callback, progress bar and the Ctrl-C poll.


@dataclasses.dataclass
class HostRun:
    """What the host callbacks of one running solve need."""

    callback: Callable[[MinimizeInfo], Any] | None = None
    bar: Any = None
    error: Exception | None = None


RUNS: dict[int, HostRun] = {}
_RUN_IDS = itertools.count(1)


def register(run: HostRun) -> int:
    """Register a running solve's host objects; return its id."""
    run_id = next(_RUN_IDS)
    RUNS[run_id] = run
    return run_id


def _host_step(run_id: jax.Array, accept: jax.Array, s: SolverState) -> jax.Array:
    return io_callback(
        _on_host,
        jax.ShapeDtypeStruct((), jnp.bool_),
        run_id, accept, s.nit, s.value, s.grad_norm, s.learning_rate, s.nfev,
        ordered=True,
    )  # fmt: skip


def _on_host(run_id, accept, nit, f, gn, lr, nfev) -> np.bool_:
    run = RUNS.get(int(run_id))
    if run is None or not bool(accept):
        return np.bool_(False)
    info = MinimizeInfo(int(nit), float(f), float(gn), float(lr), int(nfev))
    if run.bar is not None:
        run.bar.set_postfix(
            loss=f"{info.value:.4e}", gnorm=f"{info.grad_norm:.2e}", refresh=False
        )
        run.bar.update(1)
    if run.callback is None:
        return np.bool_(False)
    # An exception cannot cross the compiled loop intact (it would surface as
    # an XLA runtime error): keep it, stop the solve, and let the caller
    # re-raise it on the host once the loop has returned.
    try:
        stop = bool(run.callback(info))
    except Exception as error:
        run.error = error
        return np.bool_(True)
    return np.bool_(stop)


class _Interrupt:
    """SIGINT handling around eager solves (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._depth = 0
        self._hit = False
        self._count = 0
        self._saved: tuple[Any, int] | None = None

    def available(self) -> bool:
        """Whether a solve started now can be interrupted (main thread, default
        SIGINT handler, no other wakeup fd), or one already is."""
        if self._depth:
            return True
        return (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )

    def __enter__(self) -> _Interrupt:
        if self._depth == 0:
            if self._reader is None:
                self._reader, self._writer = socket.socketpair()
                self._reader.setblocking(False)
                self._writer.setblocking(False)
            self._drain()
            self._hit, self._count = False, 0
            assert self._writer is not None
            old_fd = signal.set_wakeup_fd(
                self._writer.fileno(), warn_on_full_buffer=False
            )
            old_handler = signal.signal(signal.SIGINT, self._handler)
            self._saved = (old_handler, old_fd)
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._saved is not None:
            handler, fd = self._saved
            self._saved = None
            signal.set_wakeup_fd(fd)
            signal.signal(signal.SIGINT, handler)

    def _handler(self, signum: int, frame: Any) -> None:
        # Signals that arrive while the main thread waits on the device reach
        # this handler once, however many they were: count the wakeup bytes.
        with self._lock:
            self._count += max(self._drain(), 1)
            self._hit = True
        if self._count >= 2:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt

    def _drain(self) -> int:
        """Read the wakeup bytes; return how many SIGINTs they record."""
        count = 0
        assert self._reader is not None
        while True:
            try:
                data = self._reader.recv(512)
            except BlockingIOError:
                return count
            if not data:
                return count
            count += data.count(signal.SIGINT)

    @property
    def hit(self) -> bool:
        """Whether Ctrl-C was pressed since the solve started."""
        return self._hit


INTERRUPT = _Interrupt()
