"""Pytree helpers shared by the solver, the loop and the NNX edges."""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
#: Leaf size from which :func:`choose` branches instead of selecting.
COND_SIZE = 4096


def all_finite(tree: PyTree) -> jax.Array:
    """Return whether every element of every leaf is finite (a scalar bool)."""
    # One reduction per leaf: the largest magnitude is finite exactly when
    # every element is (XLA's max propagates nan). ``all(isfinite(x))`` wrote
    # a boolean array and reduced it in several passes.
    peaks = [
        jnp.max(jnp.abs(x))
        for x in map(jnp.asarray, jax.tree.leaves(tree))
        if jnp.issubdtype(x.dtype, jnp.inexact) and x.size
    ]
    if not peaks:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.isfinite(t) for t in peaks]))


def select(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """``jnp.where(ok, new, old)`` leaf-wise; ``new`` if the structures differ."""
    if jax.tree.structure(new) != jax.tree.structure(old):
        return new
    return jax.tree.map(
        lambda n, o: jnp.where(ok, n, o) if hasattr(n, "dtype") else n, new, old
    )


def choose(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """``new`` if ``ok`` else ``old`` (``ok`` a scalar bool), like :func:`select`.

    With a parameter-sized leaf (:data:`COND_SIZE` elements or more) it is a
    ``lax.cond``: a ``jnp.where`` reads both trees and writes a third every
    time, which on large solves was several passes over the parameters per
    iteration; the branch taken hands its buffers on instead. Small trees keep
    the select (cheaper than a conditional). Under ``vmap`` the two agree (a
    batched ``cond`` is a select).
    """
    if jax.tree.structure(new) != jax.tree.structure(old):
        return new
    leaves_new, tdef = jax.tree.flatten(new)
    leaves_old = jax.tree.leaves(old)
    arrays = all(
        hasattr(n, "dtype")
        and jnp.shape(n) == jnp.shape(o)
        and jnp.result_type(n) == jnp.result_type(o)
        for n, o in zip(leaves_new, leaves_old, strict=True)
    )
    if not arrays or max((jnp.size(n) for n in leaves_new), default=0) < COND_SIZE:
        return select(ok, new, old)
    out = jax.lax.cond(ok, lambda a, b: a, lambda a, b: b, leaves_new, leaves_old)
    return jax.tree.unflatten(tdef, out)


def choose_lazy(ok: jax.Array, make_new: Any, old: PyTree) -> PyTree:
    """``make_new()`` if ``ok`` else ``old``, computing ``make_new()`` only when
    taken on parameter-sized trees (a ``lax.cond``; a select otherwise).

    For rare replacements of a large tree (a fallback direction): a select
    reads both trees and writes a third every time.
    """
    if max((jnp.size(x) for x in jax.tree.leaves(old)), default=0) < COND_SIZE:
        return select(ok, make_new(), old)
    return jax.lax.cond(ok, make_new, lambda: old)


def inf_norm(tree: PyTree, dtype: Any) -> jax.Array:
    """Return ``max_i |x_i|`` over all leaves, in ``dtype`` (0 for no elements)."""
    norms = [jnp.max(jnp.abs(x)).astype(dtype) for x in jax.tree.leaves(tree) if x.size]
    return jnp.max(jnp.stack(norms)) if norms else jnp.zeros((), dtype)


# Products over raveled parameter vectors, valid under any sharding. On an
# explicit mesh (``AxisType.Explicit``) a raveled vector, and an ``(m, n)`` or
# ``n x n`` buffer built like it, can be sharded along ``n``; JAX then refuses
# a contraction over ``n`` without an output sharding, a product of operands
# sharded differently along the contracted axis, and a dynamic index into
# ``n``. These helpers state the layout: the operations are the same
# (``dot_general``, a gather, a sort), so without a mesh, or on an automatic
# one, they compute exactly what ``@``, ``x[i]`` and ``argsort`` compute.


def replicated(x: jax.Array) -> NamedSharding:
    """The sharding on ``x``'s mesh with every axis replicated (on no mesh:
    the empty mesh, which every operation accepts)."""
    return NamedSharding(jax.typeof(x).sharding.mesh, P())


def gathered(x: jax.Array) -> jax.Array:
    """``x`` replicated on every device of its mesh (itself on no mesh)."""
    where = replicated(x)
    return x if where.mesh.empty else jax.sharding.reshard(x, where)


def placed_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """``x`` sharded like ``like`` (same shape; itself on no mesh)."""
    where = jax.typeof(like).sharding
    return x if where.mesh.empty else jax.sharding.reshard(x, where)


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` contracting over the parameter axis, the (small) result
    replicated: inner products ``s @ y``, and ``W^T d`` with ``W`` of shape
    ``(n, k)``; every device gets the same global sum."""
    return jnp.matmul(a, b, out_sharding=replicated(a))


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """``sum_i <a_i, b_i>`` over the leaves (``a`` conjugated), as
    ``optax.tree.vdot`` computes it (highest precision, leaves summed in
    order), each leaf contracted over all its axes in place with a replicated
    result: valid however the leaves are sharded. (``optax.tree.vdot`` ravels
    each leaf with ``jnp.vdot`` under JAX >= 0.10, whose version it compares
    as a string, and fails on a leaf sharded on an explicit mesh.)"""

    def leaf(x: Any, y: Any) -> jax.Array:
        x, y = jnp.asarray(x), jnp.asarray(y)
        if jnp.iscomplexobj(x):
            x = jnp.conj(x)
        return jnp.tensordot(
            x, y, x.ndim, precision=jax.lax.Precision.HIGHEST,
            out_sharding=replicated(x),
        )  # fmt: skip

    parts = jax.tree.leaves(jax.tree.map(leaf, a, b))
    return jnp.asarray(functools.reduce(operator.add, parts, 0))


def pick(x: jax.Array, i: jax.Array) -> jax.Array:
    """``x[i]`` along the first axis (possibly sharded), replicated."""
    return x.at[jnp.asarray(i)[None]].get(out_sharding=replicated(x))[0]


def ravel(tree: PyTree) -> tuple[jax.Array, Any]:
    """``jax.flatten_util.ravel_pytree(tree)``, valid on an explicit mesh.

    On an explicit mesh a leaf sharded other than along its first axis (a
    matrix sharded on its columns) cannot be reshaped to a vector without an
    output sharding, and leaves raveled to different shardings cannot be
    concatenated: there each leaf is reshaped to the vector's sharding (see
    :func:`_flat_sharding`) and ``unravel`` gives every leaf its own sharding
    back. Otherwise (no mesh, an automatic mesh, replicated leaves) it is
    ``ravel_pytree`` itself.

    Returns:
        ``(flat, unravel)`` as ``ravel_pytree`` returns them.
    """
    leaves, treedef = jax.tree.flatten(tree)
    where = _flat_sharding(leaves)
    if where is None:
        return ravel_pytree(tree)
    flat, unravel_list = ravel_pytree(
        [jnp.reshape(x, (-1,), out_sharding=where) for x in leaves]
    )
    layouts = [(jnp.shape(x), jax.typeof(x).sharding) for x in leaves]

    def unravel(v: jax.Array) -> PyTree:
        parts = unravel_list(v)
        return jax.tree.unflatten(
            treedef,
            [
                jnp.reshape(part, shape, out_sharding=sharding)
                for part, (shape, sharding) in zip(parts, layouts, strict=True)
            ],
        )

    return flat, unravel


def _flat_sharding(leaves: list) -> NamedSharding | None:
    """The sharding of the raveled vector of ``leaves`` on an explicit mesh:
    along every explicit mesh axis that shards some leaf when each leaf's
    size divides evenly over them (a leaf sharded on its first axis then
    ravels in place), replicated otherwise; ``None`` when no leaf is sharded
    over an explicit axis (``ravel_pytree`` needs no help)."""
    mesh, axes = None, []
    for x in leaves:
        sharding = jax.typeof(x).sharding
        explicit = set(sharding.mesh.explicit_axes) if not sharding.mesh.empty else ()
        for entry in sharding.spec:
            for name in (entry,) if isinstance(entry, str) else entry or ():
                if name in explicit and name not in axes:
                    mesh = sharding.mesh
                    axes.append(name)
    if mesh is None:
        return None
    count = int(np.prod([mesh.shape[name] for name in axes]))
    even = all(np.size(x) % count == 0 for x in leaves)
    return NamedSharding(mesh, P(tuple(axes)) if even else P())


def cast_like(tree: PyTree, like: PyTree) -> PyTree:
    """Cast ``tree``'s leaves to the dtypes of ``like``'s (same structure only)."""
    if jax.tree.structure(tree) != jax.tree.structure(like):
        return tree
    return jax.tree.map(
        lambda t, o: jnp.asarray(t, o.dtype) if hasattr(o, "dtype") else t, tree, like
    )


def strong(tree: PyTree, float_dtype: Any) -> PyTree:
    """Give weakly typed leaves a strong dtype: floats ``float_dtype``, ints int32.

    ``optax.lbfgs().init`` returns weakly typed scalars (``jnp.asarray(1.0)``)
    that its first update returns strongly typed: a state fed back into a
    jitted step would compile twice, and a resumed state would not match.
    """

    def fix(x: Any) -> Any:
        if not isinstance(x, jax.Array) or not x.weak_type:
            return x
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.asarray(x, float_dtype)
        if jnp.issubdtype(x.dtype, jnp.integer):
            return jnp.asarray(x, jnp.int32)
        return jnp.asarray(x, x.dtype)

    return jax.tree.map(fix, tree)


def lowest_precision(params: PyTree) -> Any:
    """The floating dtype of ``params`` with the largest machine epsilon."""
    dtypes = {
        x.dtype if isinstance(x, jax.Array) else jnp.dtype(jnp.result_type(x))
        for x in jax.tree.leaves(params)
    }
    if len(dtypes) == 1:
        return dtypes.pop()
    return max(dtypes, key=lambda d: float(jnp.finfo(d).eps))


def is_dynamic(x: Any) -> bool:
    """Whether ``x`` is an array (traced by jit) rather than a static value."""
    return isinstance(x, jax.Array | jax.ShapeDtypeStruct) or (
        hasattr(x, "__array__") and hasattr(x, "dtype")
    )


def partition(tree: Any) -> tuple[list, Any]:
    """Split a pytree's leaves into arrays (traced) and the rest (static)."""
    leaves, treedef = jax.tree.flatten(tree)
    dynamic = [x for x in leaves if is_dynamic(x)]
    static = tuple(None if is_dynamic(x) else x for x in leaves)
    mask = tuple(is_dynamic(x) for x in leaves)
    return dynamic, (treedef, static, mask)


def combine(dynamic: list, static: Any) -> Any:
    """Invert :func:`partition`."""
    treedef, consts, mask = static
    it = iter(dynamic)
    leaves = [next(it) if m else c for c, m in zip(consts, mask, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


def describe(tree: PyTree, limit: int = 6) -> str:
    """A short ``{path: dtype[shape]}`` summary of a pytree for error messages."""
    items = [
        (jax.tree_util.keystr(path) or "<root>")
        + f": {getattr(leaf, 'dtype', type(leaf).__name__)}{list(jnp.shape(leaf))}"
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    more = f", ... ({len(items)} leaves)" if len(items) > limit else ""
    return "{" + ", ".join(items[:limit]) + more + "}"
