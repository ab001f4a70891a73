"""``nnxopt.minimize``: the NNX edge of ``nnxopt.solve``.

The model is split once into ``params`` (the ``wrt`` Variables) and ``rest`` (the
other Variables); ``solve``'s loop runs on those pytrees entirely on device, and
the result is written back into the model once, at the end. Each solve is
compiled once per (loss function, model structure, argument shapes,
``maxiter``, callback on/off, transform *structure*) and cached, so a second
call with new data of the same shape, or with a freshly built but identical
``optax.lbfgs()``, does not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from . import _bounds
from ._loop import MinimizeHistory, MinimizeInfo
from ._objective import Objective, PyTree, split_model
from ._runner import compiled_run
from ._solve import launch
from ._solver import DEFAULT_TOLS, Solver, SolverState, default_tols
from ._status import Status
from ._tree import partition

__all__ = [
    "DEFAULT_TOLS",
    "MinimizeHistory",
    "MinimizeInfo",
    "MinimizeResult",
    "default_tols",
    "minimize",
]

_CALL = "nnxopt.minimize"


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
        history: per-iteration values and gradient norms of this call, see
            :class:`MinimizeHistory`.
        state: the whole solver state (a :class:`nnxopt.SolverState`): pass it
            back as ``minimize(..., state=result.state)`` to continue the solve
            exactly where it stopped, or save it (see the checkpointing guide).

    Example:
        :func:`minimize`'s example returns one; its fields in order:

        >>> import dataclasses, nnxopt
        >>> names = [f.name for f in dataclasses.fields(nnxopt.MinimizeResult)]
        >>> tuple(names[:5])
        ('fun', 'grad_norm', 'nit', 'nfev', 'njev')
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
    state: SolverState | None = None


def minimize(
    loss_fn: Callable[..., Any],
    model: Any,
    *args: Any,
    tx: optax.GradientTransformation | None = None,
    wrt: Any = nnx.Param,
    bounds: tuple[Any, Any] | None = None,
    gtol: float | None = None,
    ftol: float | None = None,
    maxiter: int | None = None,
    maxfev: int | None = None,
    has_aux: bool = False,
    callback: Callable[[MinimizeInfo], Any] | None = None,
    progress: bool = False,
    graph: bool | None = None,
    state: SolverState | None = None,
    history: int | None = None,
    batch_stages: int = 1,
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
      iterate, ``callback`` returning ``True``, or Ctrl-C (status
      ``INTERRUPTED``, the model at the last accepted iterate; a second Ctrl-C
      raises ``KeyboardInterrupt``).

    ``minimize`` is the NNX edge of :func:`nnxopt.solve`: the ``wrt`` Variables
    are split off, solved for with the same loop, and merged back. Resume with
    ``state=result.state``: the solve continues bit for bit (``maxiter`` and
    ``maxfev`` are budgets of the whole solve), from the state's iterate.

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
        bounds: ``(lower, upper)`` box constraints (L-BFGS-B, picked when
            ``tx=None``): each a scalar, ``None`` or shaped like
            ``nnx.state(model, wrt)`` (that ``nnx.State``, or a nested dict with
            its paths; ``None`` leaves free). As in :func:`nnxopt.solve`.
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
            accepted iteration; returning ``True`` stops the solve. If it
            raises, the solve stops there, the model is updated to the point
            it stopped at, and the exception is re-raised (with a note).
        progress: show a tqdm progress bar with the loss and gradient norm
            (needs the ``progress`` extra: ``pip install 'nnxopt[progress]'``).
        history: entries of ``result.history``, as in :func:`nnxopt.solve`
            (``None``: one per iteration; ``1``: the latest iterate only).
        batch_stages: under ``jax.vmap`` (an ensemble), the stages that
            gather the members still running into smaller batches, as in
            :func:`nnxopt.solve` (``1``, the default: one stage).
        graph: NNX graph mode (``True``), tree mode (``False``) or the default.
        state: ``result.state`` of an earlier solve of the same model and loss,
            to resume it; the model's ``wrt`` values are replaced by the state's
            iterate.
        **kwargs: keyword arguments passed to ``loss_fn``.

    Returns:
        A :class:`MinimizeResult`.

    Raises:
        TypeError: if ``loss_fn``, ``tx`` or ``callback`` has the wrong type, or
            ``state`` comes from another problem.
        ValueError: for negative tolerances or limits, or ``maxiter`` below the
            iterations ``state`` already made.
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
    graphdef, params, rest = split_model(model, wrt, graph, _CALL)
    tx, box = _bounds.setup(_CALL, params, bounds, tx)
    objective = Objective(graphdef, wrt, loss_fn, has_aux, graph, _CALL)
    dynamic, static = partition(((rest, *args), _bounds.attach(kwargs, box)))
    make = compiled_run(
        _CALL,
        ("minimize", objective),
        functools.partial(Solver, has_aux=has_aux, call=_CALL),
        tx,
        static,
        maxiter,
        prepare=_Prepare(objective),
        history=history,
        batch_stages=batch_stages,
    )
    sol, written, counts, error = launch(
        make, params, state, dynamic,
        call=_CALL, gtol=gtol, ftol=ftol, maxiter=maxiter, maxfev=maxfev,
        callback=callback, progress=progress,
    )  # fmt: skip
    nnx.update(model, sol.params, rest if written is None else written)
    if error is not None:
        error.add_note(
            f"{_CALL}: raised by the callback after iteration {int(sol.nit)}; "
            "the solve stopped there and the model holds its parameters."
        )
        raise error
    # One device-to-host transfer for all the integer fields, not one each.
    counts = np.asarray(counts)
    status = Status(int(counts[0]))
    assert sol.history is not None
    return MinimizeResult(
        fun=sol.fun,
        grad_norm=sol.grad_norm,
        nit=int(counts[1]),
        nfev=int(counts[2]),
        njev=int(counts[3]),
        success=status.success,
        status=status,
        message=status.message,
        aux=sol.aux,
        history=sol.history,
        state=sol.state,
    )


@dataclasses.dataclass(frozen=True)
class _Prepare:
    """The NNX objective as :class:`Solver` arguments, decided at trace time.

    A loss that writes no model state is a plain function of
    ``(params, rest, *args)``: the very solve ``nnxopt.solve`` runs. One that
    writes state (BatchNorm statistics, RNG counters) is solved ``stateful``:
    the state carries the snapshot each evaluation reads and what it wrote.
    """

    objective: Objective

    def __call__(self, params: PyTree, args: tuple, kwargs: dict) -> dict:
        rest, user_args = args[0], args[1:]
        if self.objective.writes_state(params, rest, user_args, kwargs):
            return dict(fun=self._stateful, stateful=True)
        return dict(fun=self._loss)

    def _loss(self, params: PyTree, rest: PyTree, *args: Any, **kwargs: Any) -> Any:
        loss, (aux, _) = self.objective.evaluate(params, rest, args, kwargs)
        return (loss, aux) if self.objective.has_aux else loss

    def _stateful(
        self, params: PyTree, rest: PyTree, *args: Any, **kwargs: Any
    ) -> tuple[jax.Array, tuple[Any, PyTree]]:
        return self.objective.evaluate(params, rest, args, kwargs)
