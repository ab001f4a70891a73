"""The L-BFGS curvature memory: stacked pairs, built like the parameters, and
the two-loop recursion that applies the inverse-Hessian approximation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from . import _tree

#: Memories of at most this many elements (``m`` times the parameters) are put
#: in newest-first order once per direction, then scanned without indexing.
REORDER_SIZE = 2**16


def placed_zeros(params: Any, lead: tuple[int, ...] = ()) -> Any:
    """Return zeros shaped ``(*lead, *p.shape)`` per leaf, placed like ``p``.

    Under ``jit``, zeros that do not depend on any input (``jnp.zeros_like``,
    ``jnp.zeros((m, *shape))``) are placed by the compiler on one device, even
    when ``p`` is sharded over many: a memory that does not fit there, and a
    transfer at the first step. Selecting the zeros against the parameter (a
    mask that is always false) makes them *depend* on it, so that sharding
    propagation (automatic meshes) and sharding-in-types (explicit meshes)
    shard every leaf like its parameter, the leading axes replicated. The
    select reads the parameter once, at ``init``; no value of it can leak
    through (``inf`` and ``nan`` included).

    Args:
        params: a pytree of arrays.
        lead: leading axes to add (the memory axis of L-BFGS), replicated.

    Returns:
        A pytree like ``params`` of zeros of shape ``(*lead, *p.shape)`` and
        dtype ``p.dtype``.
    """

    def zeros(p: Any) -> jax.Array:
        p = jnp.asarray(p)
        shape = (*lead, *p.shape)
        mask = jnp.zeros(shape, bool)
        p = jnp.broadcast_to(p, shape)
        return jnp.where(mask, p, jnp.zeros((), p.dtype))

    return jax.tree.map(zeros, params)


def new_memory(params: Any, m: int) -> Any:
    """Return zeros stacked ``m`` deep per leaf, placed like the parameter
    (see :func:`placed_zeros`): the memory axis replicated, the others
    sharded like the parameter, from ``init`` on."""
    return placed_zeros(params, (m,))


def vdot(x: Any, y: Any, dtype: jnp.dtype) -> jax.Array:
    """``Re <x, y>`` over the leaves, in ``dtype``, under any sharding (see
    :func:`nnxopt._tree.vdot`); L-BFGS and the line searches share it."""
    return optax.tree.real(_tree.vdot(x, y)).astype(dtype)


def axpy(a: jax.Array, x: Any, y: Any) -> Any:
    """Return ``a * x + y`` leaf-wise, keeping each leaf's dtype."""
    return jax.tree.map(lambda xi, yi: jnp.asarray(a, yi.dtype) * xi + yi, x, y)


def scale(a: jax.Array | float, x: Any) -> Any:
    return jax.tree.map(lambda xi: jnp.asarray(a, xi.dtype) * xi, x)


def push(
    memory: Any,
    pair: Any,
    ok: jax.Array,
    memory_idx: jax.Array,
    num_pairs: jax.Array,
    m: int,
) -> tuple[Any, jax.Array, jax.Array]:
    """Store ``pair`` in slot ``memory_idx`` of the ring buffers if ``ok``.

    ``memory`` and ``pair`` are pytrees of the same structure (a buffer per
    leaf, leading axis ``m``). A skipped pair writes out of bounds (dropped):
    an in-place update, no copy of the buffers. Returns the buffers, the next
    slot and the number of stored pairs.
    """
    slot = jnp.where(ok, memory_idx, m)
    memory = jax.tree.map(lambda mem, v: mem.at[slot].set(v, mode="drop"), memory, pair)
    memory_idx = jnp.where(ok, (memory_idx + 1) % m, memory_idx)
    num_pairs = jnp.where(ok, jnp.minimum(num_pairs + 1, m), num_pairs)
    return memory, memory_idx, num_pairs


def zero_if(cond: jax.Array, weights: jax.Array) -> jax.Array:
    """Discard every stored pair (weights 0) when ``cond``; the buffers stay."""
    return jnp.where(cond, jnp.zeros_like(weights), weights)


def where(cond: jax.Array, x: Any, y: Any) -> Any:
    return jax.tree.map(lambda xi, yi: jnp.where(cond, xi, yi), x, y)


def two_loop_recursion(
    grad: Any,
    diff_params_memory: Any,
    diff_updates_memory: Any,
    weights_memory: jax.Array,
    identity_scale: jax.Array,
    memory_idx: jax.Array,
) -> Any:
    """Return ``H g``, the L-BFGS inverse-Hessian approximation applied to ``grad``.

    ``H`` is built from the stored pairs, oldest first (the ring buffer's newest
    pair sits just before ``memory_idx``), starting from ``identity_scale * I``.
    Slots with a zero weight are exact no-ops, so a partly filled memory needs no
    mask. A memory of at most ``REORDER_SIZE`` elements is put in newest-first
    order once (one gather per buffer) and scanned; a larger one is indexed
    pair by pair (a reordered copy would be an extra pass over ``O(m n)``).

    Args:
        grad: pytree ``g``.
        diff_params_memory: stacked ``s_i``, leading axis ``m``.
        diff_updates_memory: stacked ``y_i``, leading axis ``m``.
        weights_memory: ``rho_i = 1/(s_i·y_i)``, shape ``(m,)``, 0 if unused.
        identity_scale: scalar ``gamma`` of the initial matrix ``gamma * I``.
        memory_idx: ``int32`` slot the next pair would be written to.

    Returns:
        A pytree like ``grad``.

    References:
        Nocedal & Wright, Numerical Optimization (2006), Algorithm 7.4.
    """
    dtype = weights_memory.dtype
    m = weights_memory.shape[0]
    newest_first = (memory_idx - 1 - jnp.arange(m)) % m
    memory = (diff_params_memory, diff_updates_memory, weights_memory)
    if sum(jnp.size(x) for x in jax.tree.leaves(diff_params_memory)) <= REORDER_SIZE:
        # Put in newest-first order once and scanned over: no gather per pair
        # (under vmap, where every member has its own ring position, each
        # index is a gather; a 256-member batch of 10-parameter quadratics
        # took about 10% less time). Same operations in the same order; XLA
        # may compile the products differently (last-bit differences seen in
        # float32).
        ordered = jax.tree.map(lambda x: x[newest_first], memory)
        return _two_loop(grad, ordered, lambda pair: pair, identity_scale, dtype)

    def take(i: jax.Array) -> tuple[Any, Any, jax.Array]:
        return jax.tree.map(lambda x: x[i], memory)

    return _two_loop(grad, newest_first, take, identity_scale, dtype)


def _two_loop(
    grad: Any, xs: Any, pair_of: Any, identity_scale: jax.Array, dtype: Any
) -> Any:
    """The two loops over the pairs newest first: ``pair_of(x)`` is the
    ``(s, y, rho)`` of scanned element ``x`` of ``xs``."""

    def first_loop(q: Any, x: Any) -> tuple[Any, jax.Array]:
        s, y, w = pair_of(x)  # w = 0: an empty or discarded slot, skipped
        alpha = jnp.where(w != 0, w * vdot(s, q, dtype), 0)
        return axpy(-alpha, y, q), alpha

    q, alphas = jax.lax.scan(first_loop, grad, xs)
    r = scale(identity_scale, q)

    def second_loop(r: Any, x_alpha: tuple[Any, jax.Array]) -> tuple[Any, None]:
        x, alpha = x_alpha
        s, y, w = pair_of(x)
        beta = jnp.where(w != 0, w * vdot(y, r, dtype), 0)
        return axpy(alpha - beta, s, r), None

    r, _ = jax.lax.scan(second_loop, r, (xs, alphas), reverse=True)
    return r
