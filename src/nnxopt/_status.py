"""Outcomes of solves (``Status``) and of line searches (``SearchStatus``):
two enums, one message table each."""

from __future__ import annotations

import enum
import warnings
from typing import Any

import jax.numpy as jnp


class SearchStatus(enum.IntEnum):
    """How one line search ended (``nnxopt.linesearch.SearchStatus``).

    Carried in a search's state as an ``int32`` ``status``; turn it back with
    ``SearchStatus(int(code))``. The codes of the two failures are those of the
    matching :class:`Status` members, so a solve reports them unchanged;
    ``AT_ROUNDOFF`` (13) ends a solve as ``Status.CONVERGED_ROUNDOFF`` (13).

    Example:
        >>> from nnxopt.linesearch import SearchStatus
        >>> SearchStatus.NOT_DESCENT.message.split(":")[0]
        'line search'
    """

    SUCCESS = 8
    NOT_DESCENT = 9
    MAX_LINESEARCH_STEPS = 10
    STEP_TOO_SMALL = 11
    LINESEARCH_FAILED = 5
    NON_FINITE = 6
    AT_ROUNDOFF = 13

    @property
    def message(self) -> str:
        """The human-readable explanation of this outcome."""
        return SEARCH_MESSAGES[self]

    @property
    def success(self) -> bool:
        """Whether the accepted step satisfies the search's conditions."""
        return self is SearchStatus.SUCCESS


SEARCH_MESSAGES: dict[SearchStatus, str] = {
    SearchStatus.SUCCESS: "line search: accepted step satisfies its conditions",
    SearchStatus.NOT_DESCENT: (
        "line search: the direction is not a descent direction; a safe step "
        "was taken instead"
    ),
    SearchStatus.MAX_LINESEARCH_STEPS: (
        "line search: max_linesearch_steps evaluations used without meeting "
        "the conditions; the best point seen was taken"
    ),
    SearchStatus.STEP_TOO_SMALL: (
        "line search: the bracketing interval fell below stepsize_precision; "
        "the best point seen was taken"
    ),
    SearchStatus.LINESEARCH_FAILED: (
        "line search: no step decreased the loss; the zero step was taken"
    ),
    SearchStatus.NON_FINITE: (
        "line search: the loss or slope is non-finite at the start or at every "
        "trial; the zero step was taken"
    ),
    SearchStatus.AT_ROUNDOFF: (
        "line search: no step decreased the loss, and the decrease the slope "
        "predicts for the first trial step is within the loss's rounding error "
        "(a minimum to working precision along this direction); the zero step "
        "was taken"
    ),
}

#: Line-search members that ``Status`` had before 0.2 (deprecated aliases).
_MOVED = ("SUCCESS", "NOT_DESCENT", "MAX_LINESEARCH_STEPS", "STEP_TOO_SMALL")


class _StatusType(enum.EnumType):
    def __getattr__(cls, name: str) -> Any:
        if name in _MOVED:
            warnings.warn(
                f"nnxopt.Status.{name} is deprecated and will be removed in the "
                "next release: line-search outcomes moved to "
                f"nnxopt.linesearch.SearchStatus.{name}.",
                DeprecationWarning,
                stacklevel=2,
            )
            return SearchStatus[name]
        return super().__getattr__(name)  # type: ignore[misc]


class Status(enum.IntEnum, metaclass=_StatusType):
    """How a solve (``solve``, ``minimize``) ended.

    Carried on device as an ``int32`` code; turn it back with ``Status(int(code))``.
    Every member has a ``message`` (one table, ``MESSAGES``) and a ``success`` flag.
    Line-search outcomes are :class:`nnxopt.linesearch.SearchStatus`.

    Example:
        >>> import nnxopt
        >>> s = nnxopt.Status.CONVERGED_GTOL
        >>> s.success, s.message
        (True, 'converged: the gradient norm is below gtol')
    """

    RUNNING = 0
    CONVERGED_GTOL = 1
    CONVERGED_FTOL = 2
    MAX_ITER = 3
    MAX_FEV = 4
    LINESEARCH_FAILED = 5
    NON_FINITE = 6
    CALLBACK_STOP = 7
    INTERRUPTED = 12
    CONVERGED_ROUNDOFF = 13

    @property
    def message(self) -> str:
        """The human-readable explanation of this status."""
        return MESSAGES[self]

    @property
    def success(self) -> bool:
        """Whether this status counts as a successful outcome."""
        return self in _SUCCESS


MESSAGES: dict[Status, str] = {
    Status.RUNNING: "running: the solve has not finished",
    Status.CONVERGED_GTOL: "converged: the gradient norm is below gtol",
    Status.CONVERGED_FTOL: "converged: the relative decrease of the loss is below ftol",
    Status.MAX_ITER: "stopped: maxiter iterations reached before convergence",
    Status.MAX_FEV: "stopped: maxfev evaluations reached before convergence",
    Status.LINESEARCH_FAILED: (
        "stopped: the line search found no acceptable step (the loss may be "
        "at the limit of floating-point precision, or the gradient is wrong)"
    ),
    Status.NON_FINITE: (
        "stopped: the loss or gradient became non-finite; the model was left "
        "at the best finite point"
    ),
    Status.CALLBACK_STOP: (
        "stopped: the callback returned True; the parameters are the last "
        "accepted iterate"
    ),
    Status.INTERRUPTED: (
        "stopped: interrupted (Ctrl-C); the parameters are the last accepted "
        "iterate, pass state= to resume"
    ),
    Status.CONVERGED_ROUNDOFF: (
        "converged: no decrease of the loss is resolvable in its floating-point "
        "precision along the search direction (the line search's predicted "
        "decrease is within the loss's rounding error); the gradient norm may "
        "be above gtol"
    ),
}

_SUCCESS = frozenset(
    {Status.CONVERGED_GTOL, Status.CONVERGED_FTOL, Status.CONVERGED_ROUNDOFF}
)


def is_success(code: jnp.ndarray) -> jnp.ndarray:
    """Return whether a traced ``int32`` solve status code is a success (jit-safe)."""
    codes = jnp.asarray([int(s) for s in _SUCCESS], dtype=jnp.int32)
    return jnp.any(jnp.asarray(code, jnp.int32)[..., None] == codes, axis=-1)
