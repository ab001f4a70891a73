"""Outcomes of solves and line searches: one enum, one message table."""

from __future__ import annotations

import enum

import jax.numpy as jnp


class Status(enum.IntEnum):
    """How a solve (``minimize``) or one line search ended.

    Carried on device as an ``int32`` code; turn it back with ``Status(int(code))``.
    Every member has a ``message`` (one table, ``MESSAGES``) and a ``success`` flag.

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
    # Outcomes of a single line search.
    SUCCESS = 8
    NOT_DESCENT = 9
    MAX_LINESEARCH_STEPS = 10
    STEP_TOO_SMALL = 11

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
    Status.CALLBACK_STOP: "stopped: the callback returned True",
    Status.SUCCESS: "line search: accepted step satisfies its conditions",
    Status.NOT_DESCENT: (
        "line search: the direction is not a descent direction; a safe step "
        "was taken instead"
    ),
    Status.MAX_LINESEARCH_STEPS: (
        "line search: max_linesearch_steps evaluations used without meeting "
        "the conditions; the best point seen was taken"
    ),
    Status.STEP_TOO_SMALL: (
        "line search: the bracketing interval fell below stepsize_precision; "
        "the best point seen was taken"
    ),
}

_SUCCESS = frozenset({Status.CONVERGED_GTOL, Status.CONVERGED_FTOL, Status.SUCCESS})


def is_success(code: jnp.ndarray) -> jnp.ndarray:
    """Return whether a traced ``int32`` status code is a success (jit-safe)."""
    codes = jnp.asarray([int(s) for s in _SUCCESS], dtype=jnp.int32)
    return jnp.any(jnp.asarray(code, jnp.int32)[..., None] == codes, axis=-1)
