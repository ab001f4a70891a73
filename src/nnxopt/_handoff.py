"""``nnxopt.adam_then_lbfgs``: warm up with Adam, then solve with L-BFGS."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import optax
from flax import nnx

from ._minimize import MinimizeInfo, MinimizeResult, minimize


class HandoffResult(NamedTuple):
    """The two phases of :func:`adam_then_lbfgs`.

    Attributes:
        adam: the result of the Adam phase.
        lbfgs: the result of the L-BFGS phase (the model is left at its point).
        adam_seconds: wall time of the Adam phase, compilation included.
        lbfgs_seconds: wall time of the L-BFGS phase, compilation included.

    Example:
        :func:`adam_then_lbfgs`'s example returns one (``out.adam.nit``,
        ``out.lbfgs.status``):

        >>> import nnxopt
        >>> nnxopt.HandoffResult._fields
        ('adam', 'lbfgs', 'adam_seconds', 'lbfgs_seconds')
    """

    adam: MinimizeResult
    lbfgs: MinimizeResult
    adam_seconds: float
    lbfgs_seconds: float


def adam_then_lbfgs(
    loss_fn: Callable[..., Any],
    model: Any,
    *args: Any,
    adam_steps: int = 1000,
    learning_rate: float = 1e-3,
    adam: optax.GradientTransformation | None = None,
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
    between: Callable[[Any, MinimizeResult], Any] | None = None,
    **kwargs: Any,
) -> HandoffResult:
    """Train with Adam for ``adam_steps`` iterations, then minimize with L-BFGS.

    The usual recipe for PINNs and other non-convex full-batch problems: a
    first-order method moves away from a poor initial point (where quasi-Newton
    curvature estimates are unreliable), then L-BFGS converges fast. Both phases
    are :func:`nnxopt.minimize` solves on the same model, each one compiled loop;
    the L-BFGS phase starts with a fresh memory at the point Adam reached.

    Args:
        loss_fn: ``loss_fn(model, *args, **kwargs)``, as for :func:`minimize`.
        model: the ``flax.nnx`` module; updated in place.
        *args: arguments of ``loss_fn``.
        adam_steps: iterations of the first phase (``0`` skips it).
        learning_rate: Adam's learning rate, used when ``adam`` is ``None``.
        adam: the first-phase transform; default ``optax.adam(learning_rate)``.
        tx: the second-phase transform; default nnxopt's L-BFGS.
        wrt, gtol, has_aux, callback, progress, graph: as for :func:`minimize`,
            for both phases (``gtol`` can end the Adam phase early).
        ftol, maxiter, maxfev: as for :func:`minimize`, for the L-BFGS phase.
        between: ``between(model, adam_result)``, called at the handoff (to
            evaluate, log or checkpoint the model Adam reached).
        **kwargs: keyword arguments of ``loss_fn``.

    Returns:
        A :class:`HandoffResult` with both results and their wall times.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import nnxopt
        >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> x, y = jnp.ones((8, 2)), jnp.full((8, 1), 3.0)
        >>> loss = lambda m, x, y: jnp.mean((m(x) - y) ** 2)
        >>> out = nnxopt.adam_then_lbfgs(loss, model, x, y, adam_steps=20)
        >>> out.adam.nit, out.lbfgs.status.name
        (20, 'CONVERGED_GTOL')
    """
    if (
        isinstance(adam_steps, bool)
        or not isinstance(adam_steps, int)
        or adam_steps < 0
    ):
        raise ValueError(
            f"nnxopt.adam_then_lbfgs: adam_steps must be an int >= 0; got "
            f"{adam_steps!r}."
        )
    common = dict(
        wrt=wrt,
        gtol=gtol,
        has_aux=has_aux,
        callback=callback,
        progress=progress,
        graph=graph,
    )
    start = time.perf_counter()
    first = minimize(
        loss_fn,
        model,
        *args,
        tx=optax.adam(learning_rate) if adam is None else adam,
        maxiter=adam_steps,
        **common,
        **kwargs,
    )
    middle = time.perf_counter()
    if between is not None:
        between(model, first)
        middle = time.perf_counter()  # the hook's own time counts in neither phase
    second = minimize(
        loss_fn,
        model,
        *args,
        tx=tx,
        ftol=ftol,
        maxiter=maxiter,
        maxfev=maxfev,
        **common,
        **kwargs,
    )
    end = time.perf_counter()
    return HandoffResult(first, second, middle - start, end - middle)
