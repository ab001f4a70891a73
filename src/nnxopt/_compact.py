"""The compact form of the L-BFGS inverse Hessian, for large memories.

Byrd, Nocedal and Schnabel (1994) write the L-BFGS matrix as

    H = gamma I + [S  gamma Y] M [S' ; gamma Y'],
    M = [[R^-T (D + gamma Y'Y) R^-1, -R^-T], [-R^-1, 0]],

with ``R`` the upper triangle of ``S'Y`` (pairs oldest first) and ``D`` its
diagonal. ``H g`` then needs the products ``S'g`` and ``Y'g`` (one pass over
each stacked memory), a small triangular solve, and one combination of the
pairs: about ``4 m`` passes over the parameters where the two-loop recursion
makes about ``8 m`` (its ``2 m`` axpys each read and write the whole iterate).

The small Gram matrices ``S'Y`` and ``Y'Y`` are kept in the state. Their new
column costs no pass over the memory: with ``y = g - g_prev``, ``S'y = S'g -
S'g_prev``, and ``S'g`` is the product the direction needs anyway; ``S'g_prev``
(and ``Y'g_prev``) are kept from the previous direction. The entries of the
new pair itself, ``s.y`` and ``y.y``, are its own inner products (computed for
the curvature test). The differences carry the rounding of ``S'g`` (about
``eps |s_i| |g|``), the size of the rounding the two-loop recursion makes when
it forms ``s_i.q`` with ``q`` of the size of ``g``.

Used for memories of more than ``COMPACT_SIZE`` elements; smaller ones keep
the two-loop recursion (the same matrix; the two differ by round-off), whose
scan of small operations costs less there, batched under ``vmap`` above all.

Reference: R. H. Byrd, J. Nocedal, R. B. Schnabel, Representations of
quasi-Newton matrices and their use in limited memory methods, Math.
Programming 63 (1994), eq. (3.1)-(3.2) ("compact representation").
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _tree

#: Memories (``m`` times the number of parameters) of more than this many
#: elements use the compact form; smaller ones the two-loop recursion.
COMPACT_SIZE = 2**16


def enabled(params: Any, m: int) -> bool:
    """Whether ``nnxopt.lbfgs`` uses the compact form for ``params`` (static):
    a memory of more than ``COMPACT_SIZE`` elements of real dtypes."""
    leaves = [jnp.asarray(p) for p in jax.tree.leaves(params)]
    size = m * sum(int(np.size(p)) for p in leaves)
    real = all(not jnp.iscomplexobj(p) for p in leaves)
    return real and size > COMPACT_SIZE


def new_gram(m: int, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """The Gram matrices ``[S'Y, Y'Y]`` (shape ``(2, m, m)``) and the products
    ``[S'g, Y'g]`` (shape ``(2, m)``) of an empty memory."""
    return jnp.zeros((2, m, m), dtype), jnp.zeros((2, m), dtype)


def _flat_ok(x: jax.Array) -> bool:
    """Whether stacked pairs ``x`` can be viewed as ``(m, n)`` for free: not
    sharded over a mesh axis on an explicit mesh (such a reshape is refused)."""
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    return x.ndim > 2 and (spec is None or all(a is None for a in spec))


def _products(memory: Any, v: Any, dtype: Any) -> jax.Array:
    """``[<x_i, v>]_i`` for the stacked pairs ``memory`` (leading axis ``m``):
    one pass over the memory, the ``(m,)`` result replicated."""

    def leaf(x: jax.Array, y: jax.Array) -> jax.Array:
        if _flat_ok(x):  # a matrix-vector product, XLA's fastest form on CPU
            x, y = jnp.reshape(x, (x.shape[0], -1)), jnp.reshape(y, (-1,))
        return jnp.tensordot(
            x, y, y.ndim, precision=jax.lax.Precision.HIGHEST,
            out_sharding=_tree.replicated(x),
        )  # fmt: skip

    parts = jax.tree.leaves(jax.tree.map(leaf, memory, v))
    return jnp.asarray(functools.reduce(operator.add, parts)).astype(dtype)


def products(memory: tuple[Any, Any], grad: Any, dtype: Any) -> jax.Array:
    """``[S'g, Y'g]``, shape ``(2, m)``, for ``memory = (S, Y)``."""
    return jnp.stack(
        [_products(memory[0], grad, dtype), _products(memory[1], grad, dtype)]
    )


def refresh(
    gram: jax.Array,
    prev: jax.Array,
    now: jax.Array,
    slot: jax.Array,
    stored: jax.Array,
    sy: jax.Array,
    yy: jax.Array,
) -> jax.Array:
    """``gram`` after a pair ``(s, y)`` was stored in ``slot``, if ``stored``.

    Args:
        gram: ``[S'Y, Y'Y]`` by slot, before the pair.
        prev: ``[S'g_prev, Y'g_prev]`` from the previous direction, where
            ``y = g - g_prev``.
        now: ``[S'g, Y'g]`` with the memory holding the pair.
        slot: the slot the pair went to.
        stored: whether it was stored (a skipped pair changes nothing).
        sy, yy: the pair's own ``s.y`` and ``y.y``.

    Only the entries ``s_i.y_j`` with pair ``i`` no newer than ``j`` are used
    (the upper triangle of ``R``): the new column, ``S'y``, is written; its
    row is not needed.
    """
    m = gram.shape[-1]
    own = jnp.arange(m) == slot
    column = jnp.where(own, jnp.stack([sy, yy])[:, None], now - prev)
    s_y = gram[0].at[:, slot].set(column[0])
    y_y = gram[1].at[:, slot].set(column[1]).at[slot, :].set(column[1])
    return jnp.where(stored, jnp.stack([s_y, y_y]), gram)


def newest_products(
    gram: jax.Array, memory_idx: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(s.y, y.y)`` of the newest pair, from ``gram``."""
    last = (memory_idx - 1) % gram.shape[-1]
    return gram[0, last, last], gram[1, last, last]


def apply(
    grad: Any,
    memory: tuple[Any, Any],
    weights: jax.Array,
    gram: jax.Array,
    now: jax.Array,
    identity_scale: jax.Array,
    memory_idx: jax.Array,
) -> Any:
    """Return ``H g`` in the compact form (same ``H`` as the two-loop
    recursion), ``now = [S'g, Y'g]``: slots of weight 0 (empty or discarded)
    take no part."""
    dtype = weights.dtype
    m = weights.shape[0]
    gamma = identity_scale.astype(dtype)
    s_mem, y_mem = memory
    order = (memory_idx + jnp.arange(m)) % m  # oldest first
    used = weights[order] != 0
    both = used[:, None] & used[None, :]
    s_y = gram[0][order][:, order]
    y_y = jnp.where(both, gram[1][order][:, order], 0)
    upper = jnp.triu(jnp.ones((m, m), bool))
    # R: the used pairs' upper triangle; an unused slot is a unit row.
    r = jnp.where(upper & both, s_y, 0) + jnp.diag(jnp.where(used, 0, 1).astype(dtype))
    d = jnp.where(used, jnp.diagonal(s_y), 0)
    a = jnp.where(used, now[0][order], 0)
    b = jnp.where(used, now[1][order], 0)
    v = -jax.scipy.linalg.solve_triangular(r, a, lower=False)
    u = jax.scipy.linalg.solve_triangular(
        r, -d * v - gamma * (y_y @ v) - gamma * b, lower=False, trans="T"
    )
    coef_s = jnp.zeros((m,), dtype).at[order].set(u)
    coef_y = jnp.zeros((m,), dtype).at[order].set(gamma * v)

    def combine(g: jax.Array, sm: jax.Array, ym: jax.Array) -> jax.Array:
        shape = g.shape
        if _flat_ok(sm):
            sm, ym = (jnp.reshape(x, (x.shape[0], -1)) for x in (sm, ym))
        mix = jnp.tensordot(coef_s.astype(g.dtype), sm, 1) + jnp.tensordot(
            coef_y.astype(g.dtype), ym, 1
        )
        out = jnp.asarray(gamma, g.dtype) * g + jnp.reshape(mix, shape)
        return out.astype(g.dtype)

    return jax.tree.map(combine, grad, s_mem, y_mem)
