"""The compiled, cached pieces of a solve, shared by ``solve`` and ``minimize``.

:func:`compiled_run` returns, per problem structure, a :class:`Runner`: one
jitted loop that starts a solve fresh, resumes it or continues the previous
chunk (``mode``), and the pieces that size its placeholders. The host side
that drives it (callback, progress bar, Ctrl-C, chunks) is ``_solve.launch``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _bounds, _loop
from ._cache import compiled, transform_key
from ._loop import LoopOptions, MinimizeHistory, check_batch_stages, check_history
from ._solver import DEFAULT_MAXITER, Solver, SolverState, check_options, default_tx
from ._status import is_success
from ._tree import combine

PyTree = Any


#: ``mode`` of :attr:`Runner.run`: start from ``params`` (``init``), from a
#: given state (``resume``), or continue the previous chunk.
FRESH, RESUME, CONTINUE = np.int32(0), np.int32(1), np.int32(2)
#: States up to this size start inside the loop's call (one dispatch per
#: solve), passing a cached zero state of the right shapes in their place;
#: larger ones (where a dispatch is negligible) are built by ``start`` first,
#: so no idle copy of a large state stays cached.
FUSED_BYTES = 1 << 22


@dataclasses.dataclass(frozen=True)
class Runner:
    """The compiled pieces of a solve, cached per problem structure.

    ``run(mode, params, state, history, nit0, dynamic, limits, limit, run_id)``
    starts the solve as ``mode`` says (:data:`FRESH`, :data:`RESUME`,
    :data:`CONTINUE`; ``state``, ``history`` and ``nit0`` are placeholders of
    the right shapes where the mode does not read them), runs at most ``limit``
    steps of the loop and returns ``(state, history, out)``, ``out`` holding the
    :class:`Solution` fields and the integer counts. One executable serves a
    fresh solve, a resumed one and every later chunk. ``start(params, state,
    dynamic, limits)`` builds ``(state, history)`` alone (for large states).
    """

    run: Any
    start: Any
    shapes: Any


def compiled_run(
    call: str,
    key: tuple,
    make_solver: Callable[..., Solver],
    tx: optax.GradientTransformation | None,
    static: Any,
    maxiter: int | None,
    *,
    prepare: Callable[..., dict] | None = None,
    history: int | None = None,
    batch_stages: int = 1,
) -> Callable[[bool], Runner]:
    """Return ``make(hosted)``, which returns the cached :class:`Runner`.

    ``make_solver(**options)`` builds the :class:`Solver` inside the trace;
    ``prepare(params, args, kwargs)``, if given, returns more of its arguments.
    The compiled functions are cached on ``key``, the transform's structure,
    the static arguments and the loop options.
    """
    tx = default_tx() if tx is None else tx
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            f"{call}: tx must be an optax GradientTransformation (e.g. "
            f"optax.adam(1e-3) or nnxopt.lbfgs()) or None; got {tx!r}."
        )
    check_options(call, None, None, maxiter, None)
    check_history(call, history)
    check_batch_stages(call, batch_stages)
    maxiter = DEFAULT_MAXITER if maxiter is None else int(maxiter)
    history = None if history is None else int(history)
    batch_stages = int(batch_stages)

    def make(hosted: bool) -> Runner:
        options = LoopOptions.of(maxiter, hosted, history, batch_stages)
        parts = _Parts(make_solver, tx, static, options, prepare)
        return compiled(
            (*key, transform_key(tx), static, options, prepare),
            lambda: Runner(
                jax.jit(parts.run),
                jax.jit(parts.start),
                functools.lru_cache(maxsize=8)(parts.shapes),
            ),
        )

    return make


@dataclasses.dataclass(frozen=True)
class _Parts:
    """What the traced pieces of a solve are built from (static)."""

    make_solver: Callable[..., Solver]
    tx: optax.GradientTransformation
    static: Any
    options: LoopOptions
    prepare: Callable[..., dict] | None

    def solver(self, params: PyTree, dynamic: list, limits: tuple) -> tuple:
        args, kwargs = combine(dynamic, self.static)
        kwargs, box = _bounds.detach(kwargs)
        gtol, ftol, maxfev = limits
        # minimize: the NNX objective (does the loss write state?) at trace time
        extra = {} if self.prepare is None else self.prepare(params, args, kwargs)
        if box is not None:
            extra["bounds"] = box
        solver = self.make_solver(
            tx=self.tx, gtol=gtol, ftol=ftol, maxiter=self.options.maxiter,
            maxfev=maxfev, **extra,
        )  # fmt: skip
        return solver, args, kwargs

    def start(
        self, params: PyTree, state: SolverState | None, dynamic: list, limits: tuple
    ) -> tuple[SolverState, MinimizeHistory]:
        solver, args, kwargs = self.solver(params, dynamic, limits)
        if state is None:
            state = solver.init(params, *args, **kwargs)
        else:
            state = solver.resume(state)
        return state, _loop.new_history(state, self.options.history)

    def shapes(self, signature: Any) -> tuple[Any, int]:
        """Placeholders ``(state, history)`` for ``signature`` (see
        :func:`signature`) and the state's size in bytes."""
        params, (dynamic, limits) = jax.tree.unflatten(
            signature[0],
            [
                jax.ShapeDtypeStruct(*leaf[:2], weak_type=leaf[2])
                for leaf in signature[1]
            ],
        )
        out = jax.eval_shape(self.start, params, None, dynamic, limits)
        size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(out[0]))
        if size > FUSED_BYTES:
            return None, size
        return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), out), size

    def run(
        self, mode: jax.Array, params: PyTree, state: SolverState,
        history: MinimizeHistory, nit0: jax.Array, dynamic: list, limits: tuple,
        limit: jax.Array, run_id: jax.Array,
    ) -> tuple[SolverState, MinimizeHistory, tuple]:  # fmt: skip
        solver, args, kwargs = self.solver(params, dynamic, limits)

        def started(s: SolverState) -> tuple:
            return s, _loop.new_history(s, self.options.history), s.nit

        state, history, nit0 = jax.lax.switch(
            mode,
            (
                lambda: started(solver.init(params, *args, **kwargs)),
                lambda: started(solver.resume(state)),
                lambda: (state, history, nit0),
            ),
        )
        state, history = _loop.run(
            solver, state, history, nit0, args, kwargs, self.options, limit, run_id
        )
        final = solver.final(state, *args, **kwargs)
        # one array: one device-to-host transfer for the integer fields
        counts = jnp.stack([state.status, state.nit, final[-1], state.njev, nit0])
        success = is_success(state.status)
        return state, history, (*final, success, counts.astype(jnp.int32))


def signature(params: PyTree, dynamic: Any) -> Any:
    """The structure, shapes and dtypes of a solve's array inputs (hashable)."""
    leaves, treedef = jax.tree.flatten((params, dynamic))
    # Python scalars (and JAX's typed scalars under a transformation) have no
    # shape attribute: np.shape and result_type describe every leaf.
    return treedef, tuple(
        (np.shape(x), jnp.result_type(x), getattr(x, "weak_type", False))
        for x in leaves
    )
