"""What a solve under ``jax.vmap`` (or ``jax.jit``) cannot take: trace-time checks.

Batching itself needs no code: ``lax.while_loop`` with a batched predicate runs
until every member is done and, at each iteration, keeps the old state of the
members already done (a per-member select), so each member's iterates, counts
and status are those of its own solve. A member that is done still computes the
step (its loss evaluations included) while others run; the result is thrown
away. What cannot be batched is static: the transform, ``maxiter`` (the history's
length), the tolerances and budgets (one compiled loop), and the host side
(``callback``, ``progress``: an ordered host callback cannot run per member).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import jax

PyTree = Any


def check_static(call: str, **options: Any) -> None:
    """Raise a ``TypeError`` naming an option that is traced (vmapped or jitted over)."""
    for name, value in options.items():
        if name == "tx":
            try:
                where = _tx_tracer(value)
            except TypeError:  # an unhashable transform: no memo
                where = _find_tracer(value)
            if where is not None:
                raise TypeError(
                    f"{call}: tx captures a traced value ({where}): a transform's "
                    "hyperparameters cannot be vmapped or jitted over. Build tx "
                    "from Python numbers; to vary a hyperparameter per batch member, "
                    "make it an argument of fun (e.g. a weight of the loss), or "
                    "solve each value separately."
                )
        elif isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"{call}: {name} is a traced value ({value.aval}), vmapped or "
                f"jitted over; {name} is a static option, one Python number for "
                f"the whole solve (and the whole batch). Pass {name} as a number; "
                "to vary it, solve each value separately."
            )


def forbid_batching(call: str, tree: PyTree) -> PyTree:
    """Return ``tree`` unchanged, raising a clear error if it is batched by vmap.

    Marks the inputs of a solve with a host side (``callback`` or ``progress``):
    an ordered host callback cannot run inside a batched loop, and JAX's own
    error ("Ordered IO effects not supported in vmap") does not say what to do.
    The check runs when the vmap is traced, also for ``vmap(jit(...))``.
    """
    if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree)):
        return tree
    return _marker(call)(tree)


@functools.cache
def _marker(call: str) -> Any:
    @jax.custom_batching.custom_vmap
    def mark(tree: PyTree) -> PyTree:
        return tree

    @mark.def_vmap
    def _rule(axis_size: int, in_batched: Any, tree: PyTree) -> Any:
        raise TypeError(
            f"{call}: callback= and progress= cannot run under jax.vmap (a host "
            "callback runs once per iteration of one solve, and batch members "
            "iterate together). Drop them inside the vmapped function and read "
            "the batched Solution afterwards (sol.nit, sol.status, sol.history), "
            "or solve the members in a Python loop to watch each one."
        )

    return mark


@functools.lru_cache(maxsize=256)
def _tx_tracer(tx: Any) -> str | None:
    """:func:`_find_tracer` memoised per transform object (cheap on each call)."""
    return _find_tracer(tx)


def _find_tracer(obj: Any, depth: int = 0, seen: set[int] | None = None) -> str | None:
    """A description of a tracer reachable from ``obj`` through closures, else None."""
    seen = set() if seen is None else seen
    if depth > 12 or id(obj) in seen:
        return None
    seen.add(id(obj))
    if isinstance(obj, jax.core.Tracer):
        return f"{type(obj).__name__} {obj.aval}"
    children: list[Any] = []
    if isinstance(obj, functools.partial):
        children = [obj.func, *obj.args, *obj.keywords.values()]
    elif isinstance(obj, types.FunctionType):
        for cell in obj.__closure__ or ():
            try:
                children.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
        children += list(obj.__defaults__ or ())
    elif isinstance(obj, tuple | list):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    for child in children:
        found = _find_tracer(child, depth + 1, seen)
        if found is not None:
            return found
    return None
