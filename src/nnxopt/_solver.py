"""The pure solver: ``init``, ``step`` and ``terminate`` on a ``SolverState``.

Everything a solve knows lives in one NamedTuple of arrays, so a solve can be
stopped, saved, batched and resumed: the loop (``_loop.py``) only drives these
pieces, and a user can drive them from a loop of their own.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _bounds
from ._lbfgs import lbfgs
from ._objective import explain_tracer_errors, unpack_loss
from ._protocol import Capabilities, extra_args
from ._status import Status
from ._tree import (
    all_finite,
    cast_like,
    choose,
    inf_norm,
    lowest_precision,
    select,
    strong,
)

PyTree = Any
_INT = jnp.int32

#: Default ``gtol`` and ``ftol`` per floating-point precision (see ``default_tols``).
DEFAULT_TOLS: dict[str, tuple[float, float]] = {
    "float64": (1e-5, 1e7 * float(np.finfo(np.float64).eps)),
    "float32": (1e-5, 0.0),
    "float16": (1e-3, 10 * float(np.finfo(np.float16).eps)),
    "bfloat16": (1e-2, 10 * 2.0**-7),
}
DEFAULT_MAXITER = 15000
DEFAULT_MAXFEV = 15000


def default_tols(dtype: Any) -> tuple[float, float]:
    """Return the default ``(gtol, ftol)`` for parameters of ``dtype``.

    float64 uses scipy's L-BFGS-B defaults: ``gtol=1e-5`` and ``ftol = factr *
    eps64`` with ``factr=1e7`` (about ``2.2e-9``). float32 keeps ``gtol=1e-5``
    and uses ``ftol=0`` (no ``ftol`` test): the solve stops on the gradient, or
    with ``LINESEARCH_FAILED`` when accepted steps no longer change the loss at
    all (the float32 floor; ``ftol`` convergence needs a step that decreased it). The relative
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


@functools.cache
def default_tx() -> optax.GradientTransformationExtraArgs:
    """nnxopt's default L-BFGS, one object (its line search follows the dtype)."""
    return lbfgs()


class BestPoint(NamedTuple):
    """The accepted iterate with the lowest loss (returned when a solve fails).

    An approximate-Wolfe search may accept a step that raises the loss a little,
    so the last iterate is not always the best one.

    Example:
        A solve's state carries one, ``sol.state.best`` (a solve shown field by
        field: ``docs/api/results.md`` (*States and results, by example*)):

        >>> import nnxopt
        >>> nnxopt.BestPoint._fields
        ('params', 'value', 'grad_norm', 'aux', 'written')
    """

    params: PyTree
    value: jax.Array
    grad_norm: jax.Array
    aux: Any
    written: PyTree


class SolverState(NamedTuple):
    """The whole state of a solve: a pytree of arrays (save it, resume from it).

    Attributes:
        params: the last accepted iterate.
        opt_state: the transform's state (L-BFGS memory, line-search state).
        value: the loss at ``params``.
        grad: the gradient at ``params``.
        grad_norm: the infinity norm of ``grad``.
        learning_rate: the step the last line search accepted (``nan`` without one).
        aux: the auxiliary output at ``params`` when it is carried, else None.
        snapshot: the non-optimized model state ``value`` was computed on (only
            for NNX losses that write state, else None).
        written: the model state that evaluation wrote (same rule).
        nit: accepted iterations so far (``int32``), counted against ``maxiter``.
        nfev: loss evaluations so far (``int32``), counted against ``maxfev``.
        njev: gradient evaluations so far (``int32``).
        num_fails: failed line searches in a row (``int32``).
        status: an ``int32`` :class:`nnxopt.Status` code, ``RUNNING`` until it ends.
        best: the :class:`BestPoint`.

    Example:
        ``sol.state`` after :func:`nnxopt.solve`, ``result.state`` after
        :func:`nnxopt.minimize`, or what :meth:`Solver.init` and
        :meth:`Solver.step` return (a solve's state shown field by field:
        ``docs/api/results.md`` (*States and results, by example*)):

        >>> import nnxopt
        >>> nnxopt.SolverState._fields[:5]
        ('params', 'opt_state', 'value', 'grad', 'grad_norm')
        >>> nnxopt.Status(0).name  # the status field of a state still running
        'RUNNING'
    """

    params: PyTree
    opt_state: PyTree
    value: jax.Array
    grad: PyTree
    grad_norm: jax.Array
    learning_rate: jax.Array
    aux: Any
    snapshot: PyTree
    written: PyTree
    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    num_fails: jax.Array
    status: jax.Array
    best: BestPoint


def strong_params(params: PyTree) -> PyTree:
    """Parameters as strongly typed arrays (Python floats and weakly typed
    arrays keep their dtype): the iterates the loop makes are strong, and the
    state must keep one type from ``init`` on."""

    def fix(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.weak_type:
            return x  # the common case, without a dispatch
        x = jnp.asarray(x)
        return jnp.asarray(x, x.dtype) if x.weak_type else x

    return jax.tree.map(fix, params)


def first_status(*cases: tuple[Any, Status]) -> jax.Array:
    """The status of the first true condition, else ``RUNNING`` (jit-safe)."""
    out = jnp.asarray(Status.RUNNING, _INT)
    for cond, status in reversed(cases):
        out = jnp.where(cond, jnp.asarray(status, _INT), out)
    return out


def check_options(call: str, gtol: Any, ftol: Any, maxiter: Any, maxfev: Any) -> None:
    """Check the stopping options given as Python numbers (arrays pass)."""
    for name, value in (("gtol", gtol), ("ftol", ftol)):
        if value is None or isinstance(value, jax.Array):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"{call}: {name} must be a number; got {value!r}."
            ) from None
        if not number >= 0:
            raise ValueError(
                f"{call}: {name} must be >= 0 (0 disables it); got {value!r}."
            )
    for name, value, low in (("maxiter", maxiter, 0), ("maxfev", maxfev, 1)):
        if value is None or isinstance(value, jax.Array):
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{call}: {name} must be an int; got {value!r}.")
        if value < low:
            raise ValueError(f"{call}: {name} must be >= {low}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Solver:
    """The pure pieces of a solve: ``init``, ``step``, ``terminate``, ``final``.

    ``nnxopt.solve`` is these pieces in one compiled ``lax.while_loop``; drive
    them yourself for a loop of your own (logging, checkpoints, a custom stop)
    with exactly the same iterates and counts. Each piece is a pure function
    of pytrees: jit it once and call it with new data of the same shapes.

    Args:
        fun: ``fun(params, *args, **kwargs)`` returning a real scalar, or
            ``(scalar, aux)`` with ``has_aux=True``.
        tx: any optax transform (see the protocol in the guide); ``None`` means
            ``nnxopt.lbfgs()``.
        has_aux: whether ``fun`` returns ``(loss, aux)``.
        gtol, ftol, maxiter, maxfev: as in :func:`nnxopt.solve` (``None``: the
            defaults for the parameters' dtype). Budgets count the whole solve:
            ``maxiter`` is compared with ``state.nit``, also after a resume.
        bounds: ``(lower, upper)`` pytrees of arrays shaped like the parameters
            (see ``nnxopt.solve``); needs a transform that honours them
            (``nnxopt.lbfgsb``). The start is projected, ``gtol`` applies to
            the projected gradient and the transform gets ``bounds=``.
        stateful: internal (``nnxopt.minimize``): ``fun(params, snapshot, *args)``
            returns ``(loss, (aux, written))`` and the state carries the snapshot.
        call: the public name used in error messages.

    Example:
        A user-written loop equal to ``nnxopt.solve`` (same iterates, counts and
        status; ``solve`` adds the history, callbacks and Ctrl-C):

        >>> import jax, jax.numpy as jnp, nnxopt
        >>> def fun(p, target):
        ...     return jnp.sum((p["w"] - target) ** 2) + jnp.sum(p["w"] ** 4)
        >>> params, target = {"w": jnp.zeros(3)}, jnp.arange(3.0)
        >>> solver = nnxopt.Solver(fun, maxiter=50)
        >>> step = jax.jit(solver.step)
        >>> state = jax.jit(solver.init)(params, target)
        >>> while not solver.terminate(state):
        ...     state = step(state, target)
        >>> mine = nnxopt.Solution.from_state(solver, state, target)
        >>> sol = nnxopt.solve(fun, params, target, maxiter=50)
        >>> bool(jnp.all(mine.params["w"] == sol.params["w"]))
        True
        >>> (int(mine.nit), int(mine.nfev)) == (int(sol.nit), int(sol.nfev))
        True
    """

    fun: Callable[..., Any]
    tx: optax.GradientTransformation | None = None
    has_aux: bool = False
    gtol: Any = None
    ftol: Any = None
    maxiter: Any = None
    maxfev: Any = None
    stateful: bool = False
    call: str = "nnxopt.Solver"
    bounds: Any = None

    def __post_init__(self) -> None:
        if not callable(self.fun):
            raise TypeError(f"{self.call}: fun must be callable; got {self.fun!r}.")
        if self.tx is None:
            object.__setattr__(self, "tx", default_tx())
        if not isinstance(self.tx, optax.GradientTransformation):
            raise TypeError(
                f"{self.call}: tx must be an optax GradientTransformation (e.g. "
                f"optax.adam(1e-3) or nnxopt.lbfgs()) or None; got {self.tx!r}."
            )
        check_options(self.call, self.gtol, self.ftol, self.maxiter, self.maxfev)

    # -- evaluations --------------------------------------------------------

    def _loss(self, x: PyTree, snapshot: PyTree, args: tuple, kwargs: dict) -> Any:
        if self.stateful:
            return self.fun(x, snapshot, *args, **kwargs)
        with explain_tracer_errors(self.call, "fun"):
            return self.fun(x, *args, **kwargs)

    def _split(self, out: Any) -> tuple[jax.Array, tuple[Any, PyTree]]:
        """``fun``'s output as ``(loss, (aux, written))``."""
        if self.stateful:
            return out
        loss, aux = unpack_loss(self.call, out, self.has_aux, "fun")
        return loss, (aux, None)

    def _evaluate(
        self, x: PyTree, snapshot: PyTree, args: tuple, kwargs: dict
    ) -> tuple[jax.Array, PyTree, Any, PyTree]:
        def f(p: PyTree) -> tuple[jax.Array, tuple[Any, PyTree]]:
            return self._split(self._loss(p, snapshot, args, kwargs))

        (value, (aux, written)), grad = jax.value_and_grad(f, has_aux=True)(x)
        return value, grad, aux, written

    def _value_fn(self, snapshot: PyTree, args: tuple, kwargs: dict) -> Callable:
        def value_fn(x: PyTree) -> jax.Array:
            return self._split(self._loss(x, snapshot, args, kwargs))[0]

        return value_fn

    def _carries_aux(self, caps: Capabilities) -> bool:
        return self.has_aux and not self._reuses(caps)

    def _reuses(self, caps: Capabilities) -> bool:
        return caps.reuse and not self.stateful

    def _grad_norm(self, x: PyTree, g: PyTree, dtype: Any) -> jax.Array:
        """``gtol``'s measure: the gradient's (projected with bounds) inf norm."""
        if self.bounds is None:
            return inf_norm(g, dtype)
        return _bounds.projected_grad_norm(x, g, self.bounds, dtype)

    def _limits(self, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        d_gtol, d_ftol = default_tols(dtype)
        gtol = d_gtol if self.gtol is None else self.gtol
        ftol = d_ftol if self.ftol is None else self.ftol
        maxiter = DEFAULT_MAXITER if self.maxiter is None else self.maxiter
        maxfev = DEFAULT_MAXFEV if self.maxfev is None else self.maxfev
        return (
            jnp.asarray(gtol, dtype),
            jnp.asarray(ftol, dtype),
            jnp.asarray(maxiter, _INT),
            jnp.asarray(maxfev, _INT),
        )

    # -- the pieces ---------------------------------------------------------

    def init(self, params: PyTree, *args: Any, **kwargs: Any) -> SolverState:
        """Evaluate ``fun`` at ``params`` and return the starting state."""
        snapshot, args = (args[0], args[1:]) if self.stateful else (None, args)
        params = strong_params(params)
        if self.bounds is not None:
            params = _bounds.project(params, self.bounds)
        value, grad, aux, written = self._evaluate(params, snapshot, args, kwargs)
        dtype = value.dtype
        tx = self.tx
        assert tx is not None
        opt_state = strong(tx.init(params), lowest_precision(params))
        if self.bounds is not None and not _bounds.honours_bounds(opt_state, params):
            _bounds.check_transform(self.call, tx, params)
        caps = Capabilities.of(opt_state, params)
        aux = aux if self._carries_aux(caps) else None
        snapshot = snapshot if self.stateful else None
        gnorm = self._grad_norm(params, grad, dtype)
        zero = jnp.zeros((), _INT)
        state = SolverState(
            params=params,
            opt_state=opt_state,
            value=value,
            grad=grad,
            grad_norm=gnorm,
            learning_rate=jnp.asarray(jnp.nan, dtype),
            aux=aux,
            snapshot=snapshot,
            written=written,
            nit=zero,
            nfev=zero + 1,
            njev=zero + 1,
            num_fails=zero,
            status=jnp.asarray(Status.RUNNING, _INT),
            best=BestPoint(params, value, gnorm, aux, written),
        )
        return self.resume(state)

    def resume(self, state: SolverState) -> SolverState:
        """Return ``state`` with its status recomputed for this solver's limits.

        A state that stopped on ``maxiter``, ``maxfev``, an interrupt or a
        callback runs again if the (whole-solve) budgets allow; one at a
        point meeting ``gtol`` stays converged.
        """
        gtol, _, maxiter, maxfev = self._limits(state.value.dtype)
        caps = Capabilities.of(state.opt_state, state.params)
        finite = jnp.isfinite(state.value) & all_finite(state.grad)
        status = first_status(
            (~finite, Status.NON_FINITE),
            (state.num_fails >= caps.retries, Status.LINESEARCH_FAILED),
            (state.grad_norm <= gtol, Status.CONVERGED_GTOL),
            (state.nit >= maxiter, Status.MAX_ITER),
            (state.nfev >= maxfev, Status.MAX_FEV),
        )
        return state._replace(status=status)

    def terminate(self, state: SolverState) -> jax.Array:
        """Return whether the solve has ended (``state.status`` is not RUNNING)."""
        return state.status != Status.RUNNING

    def step(self, state: SolverState, *args: Any, **kwargs: Any) -> SolverState:
        """Run one iteration: the transform's update, then the stopping rules.

        Parameters never become non-finite: an iteration that produces a
        non-finite point or a failed line search keeps the previous iterate.
        """
        if self.stateful:
            args = args[1:]  # the state carries the snapshot
        tx = self.tx
        assert tx is not None
        params, dtype = state.params, state.value.dtype
        caps = Capabilities.of(state.opt_state, params)
        fn = self._value_fn(state.snapshot, args, kwargs)
        extra = extra_args(tx, state.value, state.grad, fn)
        if self.bounds is not None:
            extra["bounds"] = self.bounds
        updates, opt_state = tx.update(state.grad, state.opt_state, params, **extra)
        opt_state = cast_like(opt_state, state.opt_state)
        x = cast_like(optax.apply_updates(params, updates), params)
        if self.bounds is not None:  # x + (p - x) may round out of the box
            x = _bounds.project(x, self.bounds)
        ls_fev, ls_jev = caps.evaluations(opt_state, params)
        snapshot = state.written if self.stateful else None
        if self._reuses(caps):
            f, g = caps.stored(opt_state, params)
            aux, written, ev = None, None, 0
        else:
            f, g, aux, written = self._evaluate(x, snapshot, args, kwargs)
            aux = aux if self._carries_aux(caps) else None
            ev = 1
        # The decrease tests compare values on one snapshot: the line search's.
        f_ls = caps.stored(opt_state, params)[0] if caps.reuse else f
        f, f_ls, g = f.astype(dtype), f_ls.astype(dtype), cast_like(g, state.grad)
        return self._conclude(
            state, caps, x, opt_state, f, f_ls, g, aux, snapshot, written,
            ls_fev + ev, ls_jev + ev,
        )  # fmt: skip

    def _conclude(
        self, state: SolverState, caps: Capabilities, x: PyTree, opt_state: PyTree,
        f: jax.Array, f_ls: jax.Array, g: PyTree, aux: Any, snapshot: PyTree,
        written: PyTree, fev: jax.Array, jev: jax.Array,
    ) -> SolverState:  # fmt: skip
        """Accept or reject the new point; apply the stopping rules."""
        dtype = state.value.dtype
        gtol, ftol, maxiter, maxfev = self._limits(dtype)
        nfev, njev = state.nfev + fev, state.njev + jev
        gn = self._grad_norm(x, g, dtype)
        finite = all_finite(x) & jnp.isfinite(f) & all_finite(g)
        lr = caps.learning_rate(opt_state, state.params, dtype)
        # A search that made no step because no decrease is resolvable
        # (SearchStatus.AT_ROUNDOFF) counts as a failed one, so the transform
        # retries exactly as before (a reset memory); if the last try is at
        # round-off too, the solve has converged to working precision.
        flat = caps.at_roundoff(opt_state, state.params) & jnp.isfinite(state.value)
        failed = caps.failed(opt_state, state.params, lr, f_ls, state.value) | flat
        accept = finite & ~failed
        # A search step that leaves the loss exactly unchanged made no progress
        # (a tiny step against a wall of non-finite values, or the floor of the
        # precision): it counts towards LINESEARCH_FAILED and is never ftol
        # convergence, which needs a finite step that decreased the loss.
        stalled = accept & (f_ls == state.value) if caps.search else False
        fails = jnp.where(failed | stalled, state.num_fails + 1, 0).astype(_INT)
        nit = state.nit + accept.astype(_INT)
        scale = jnp.maximum(jnp.maximum(jnp.abs(state.value), jnp.abs(f_ls)), 1)
        rel = (state.value - f_ls) / scale
        status = first_status(
            (~finite, Status.NON_FINITE),
            (accept & (gn <= gtol), Status.CONVERGED_GTOL),
            (flat & (fails >= caps.retries), Status.CONVERGED_ROUNDOFF),
            (fails >= caps.retries, Status.LINESEARCH_FAILED),
            (
                accept & (f_ls < state.value) & (rel <= ftol) if caps.search else False,
                Status.CONVERGED_FTOL,
            ),
            (nit >= maxiter, Status.MAX_ITER),
            (nfev >= maxfev, Status.MAX_FEV),
        )
        moved = state._replace(
            params=x, value=f, grad=g, grad_norm=gn, learning_rate=lr, aux=aux,
            snapshot=snapshot, written=written,
        )  # fmt: skip
        # The transform's state always advances (a reset memory, a shorter
        # step): no select, which would copy the L-BFGS memory every iteration.
        new = choose(accept, moved, state)._replace(
            opt_state=opt_state, nit=nit, nfev=nfev, njev=njev, num_fails=fails,
            status=status,
        )  # fmt: skip
        better = accept & (f < state.best.value)
        best = choose(better, BestPoint(x, f, gn, aux, written), state.best)
        return new._replace(best=best)

    def final(
        self, state: SolverState, *args: Any, **kwargs: Any
    ) -> tuple[PyTree, PyTree, jax.Array, jax.Array, Any, jax.Array]:
        """The point a solve returns: ``(params, written, fun, grad_norm, aux, nfev)``.

        The last accepted iterate if the solve converged or was stopped by the
        user (Ctrl-C, or a callback that returned True or raised), else the best
        one (never a non-finite point). With ``has_aux`` and a transform whose
        value is reused, ``aux`` costs one evaluation (counted in ``nfev``).
        """
        keep_last = returns_last_iterate(state.status)
        last = (state.params, state.written, state.value, state.grad_norm, state.aux)
        b = state.best
        x, written, fun, gnorm, aux = select(
            keep_last, last, (b.params, b.written, b.value, b.grad_norm, b.aux)
        )
        nfev = state.nfev
        if self.has_aux and not self._carries_aux(
            Capabilities.of(state.opt_state, state.params)
        ):
            snapshot, args = (args[0], args[1:]) if self.stateful else (None, args)
            out = self._split(self._loss(x, snapshot, args, kwargs))
            fun, aux = out[0].astype(fun.dtype), out[1][0]
            nfev = nfev + 1
        return x, written, fun, gnorm, aux, nfev


def returns_last_iterate(code: jax.Array) -> jax.Array:
    """Whether a solve ending with ``code`` returns its last accepted iterate
    (jit-safe): a convergence, or a stop by the user (Ctrl-C, the callback)."""
    keep = (
        Status.CONVERGED_GTOL, Status.CONVERGED_FTOL, Status.CONVERGED_ROUNDOFF,
        Status.INTERRUPTED, Status.CALLBACK_STOP,
    )  # fmt: skip
    code = jnp.asarray(code, _INT)
    return functools.reduce(jnp.logical_or, [code == k for k in keep])
