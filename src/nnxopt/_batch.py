"""Solves under ``jax.vmap``: the batched loop's two hooks and trace-time checks.

``lax.while_loop`` with a batched predicate already runs until every member is
done and keeps, at each iteration, the old carry of the members already done
(a per-member select). But it selects *every* carried array, the per-call
history of ``maxiter + 1`` entries included, at every iteration: with the
default ``maxiter`` that copy dominated small batched solves (24x slower at
256 members). The loop therefore reduces its predicate itself
(:func:`any_member`: run while any member runs; unbatched, so JAX adds no
select) and selects only the solver state per member (:func:`keep_running`);
the history of a finished member is written at a dropped index. Unbatched,
both hooks are the identity. Each member's iterates, counts and status are
those of its own solve; a member that is done still computes the step (its
loss evaluations included) while others run, and the result is thrown away,
unless ``batch_stages`` gathers the running members into smaller batches
(``nnxopt._loop._staged``, a ``custom_vmap`` of the whole loop).

What cannot be batched is static: the transform, ``maxiter`` (the history's
length), the tolerances and budgets (one compiled loop), and the host side
(``callback``, ``progress``: an ordered host callback cannot run per member).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


@jax.custom_batching.custom_vmap
def any_member(flag: jax.Array) -> jax.Array:
    """``flag`` (a bool scalar); under ``vmap``, whether it holds for any member.

    The result is not batched, so a ``while_loop`` predicate built from it is
    not either (and JAX does not select the carry per member).
    """
    return flag


@any_member.def_vmap
def _any_member_rule(axis_size: int, in_batched: list, flag: jax.Array) -> tuple:
    del axis_size
    if not in_batched[0]:
        return flag, False
    # nested vmaps: reduce this axis, then let the outer rule reduce its own
    return any_member(jnp.any(flag, axis=0)), False


@jax.custom_batching.custom_vmap
def keep_running(running: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """``new``; under ``vmap``, ``new`` for the members ``running``, else ``old``.

    Unbatched, the loop body runs only while its one member runs: ``new``.
    """
    del running, old
    return new


@keep_running.def_vmap
def _keep_running_rule(
    axis_size: int, in_batched: list, running: jax.Array, new: PyTree, old: PyTree
) -> tuple:
    running_b, new_b, old_b = in_batched
    if not running_b:  # the same for every member, so running: as unbatched
        return new, new_b

    def pick(n: jax.Array, nb: bool, o: jax.Array, ob: bool) -> jax.Array:
        n = n if nb else jnp.broadcast_to(n, (axis_size, *jnp.shape(n)))
        o = o if ob else jnp.broadcast_to(o, (axis_size, *jnp.shape(o)))
        r = jnp.reshape(running, (axis_size,) + (1,) * (n.ndim - 1))
        return jnp.where(r, n, o)

    out = jax.tree.map(pick, new, new_b, old, old_b)
    return out, jax.tree.map(lambda _: True, new)


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
