"""Where the value and gradient a transform stores hold (``minimize_step``'s reuse).

``Optimizer.minimize_step`` reuses the stored value and gradient only at the
iterate they were computed at and for the call they were computed for: a copy
of the parameters (:class:`ReuseKey`) and a checksum of the arguments
(:func:`fingerprint`), compared on device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

# Multiplier of Knuth's multiplicative hash (2**32 / golden ratio).
_KNUTH = 2654435761


class ReuseKey(NamedTuple):
    """Where the value and gradient stored in the transform's state hold.

    ``minimize_step`` reuses them only when the model's ``wrt`` parameters equal
    ``params`` exactly and the arguments' fingerprint equals ``fingerprint``
    (see :func:`fingerprint`).

    Attributes:
        params: the iterate the last ``minimize_step`` moved to (a copy of the
            ``wrt`` parameters), or None for a transform that stores no value
            and gradient (nothing is reused, nothing is kept).
        fingerprint: ``float[3]`` checksum of the loss function, the static and
            array arguments and the non-``wrt`` model state of that call;
            ``nan`` (never equal) when reuse is not valid.
    """

    params: Any
    fingerprint: jax.Array


def fingerprint(key: int, trees: Any, dtype: Any) -> jax.Array:
    """A ``float[3]`` checksum of ``trees``'s array leaves and a static ``key``.

    ``[key mod 2**24, sum_i c_i sum(x_i), sum_i c_i sum(w * x_i)]`` with a
    per-leaf constant ``c_i`` and pseudo-random weights ``w`` in ``[1, 2)``
    (a multiplicative hash of the element's index and the leaf's): one fused
    reduction per leaf. It detects any change of one element that moves the
    sums by more than their rounding, permutations and swapped leaves; a change
    crafted to cancel in both sums, or below the rounding of ``dtype``
    (relative ``~1e-7`` of ``sum(|x|)`` in float32), goes unnoticed.
    """
    out = jnp.zeros((3,), dtype).at[0].set(key % 2**24)
    for i, x in enumerate(jax.tree.leaves(trees)):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            x = jnp.stack([x.real, x.imag])
        x = x.ravel().astype(dtype)
        index = jax.lax.iota(jnp.uint32, x.size) + jnp.uint32((i * 40503) % 2**32)
        w = 1 + ((index * jnp.uint32(_KNUTH)) >> 8).astype(dtype) / 2**24
        c = 1 + ((i * _KNUTH) % 2**16) / 2**16
        out = out.at[1:].add(c * jnp.stack([jnp.sum(x), jnp.sum(w * x)]))
    return out


def tree_equal(a: PyTree, b: PyTree) -> jax.Array:
    """Whether two pytrees of arrays are equal element for element (jit-safe)."""
    same = [
        jnp.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    ]
    return jnp.all(jnp.stack(same)) if same else jnp.asarray(True)
