"""Box bounds on pytrees: validation, broadcasting, projection.

A bound is a scalar, ``None`` (free) or a pytree with the paths of the
parameters (a dict, an ``nnx.State`` of ``nnx.state(model, wrt)``, a nested
dict of its ``to_pure_dict()``); a leaf may sit at a prefix of the parameters'
paths and then applies to the whole subtree. :func:`normalize` turns
``(lower, upper)`` into two pytrees of full arrays shaped like the parameters
(``-inf``/``+inf`` where free), which every other piece uses.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._protocol import find_fields

PyTree = Any

#: The private keyword that carries the bounds from ``solve``/``minimize`` into
#: the compiled solve (``_runner._Parts`` pops it before calling ``fun``).
KEY = "__nnxopt_bounds__"

#: The state field that declares a transform honours ``bounds=`` (see
#: ``nnxopt._protocol``).
FIELD = "num_active"


def _name(key: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _path(path: tuple) -> tuple:
    """A path of plain names; an NNX Variable's trailing ``.value`` dropped."""
    names = tuple(_name(k) for k in path)
    if (
        path
        and isinstance(path[-1], jax.tree_util.GetAttrKey)
        and names[-1]
        in (
            "value",
            "raw_value",
        )
    ):
        names = names[:-1]
    return names


def _show(path: tuple) -> str:
    return "".join(f"[{p!r}]" for p in path) or "<root>"


def _is_leaf(x: Any) -> bool:
    return x is None or _is_variable(x)


def _is_variable(x: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return False
    return isinstance(x, nnx.Variable)


def _leaf_value(x: Any) -> Any:
    return x.get_value() if _is_variable(x) else x


def _broadcast(call: str, name: str, bound: PyTree, params: PyTree) -> PyTree:
    """``bound`` as full arrays shaped like ``params`` (``fill`` where None)."""
    fill = -np.inf if name == "lower" else np.inf
    entries = {
        _path(p): _leaf_value(leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(bound, is_leaf=_is_leaf)[0]
    }
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    used: set[tuple] = set()
    out = []
    for p, x in flat:
        path = _path(p)
        prefixes = [path[:k] for k in range(len(path), -1, -1) if path[:k] in entries]
        if not prefixes:
            raise ValueError(
                f"{call}: bounds {name} has no entry for the parameter "
                f"{_show(path)} (shape {jnp.shape(x)}). Give a pytree with the "
                "paths of the parameters (None or ±inf for a free leaf), or a "
                "scalar for all of them."
            )
        used.add(prefixes[0])
        b = entries[prefixes[0]]
        dtype = jnp.result_type(x)
        if b is None:
            out.append(jnp.full(jnp.shape(x), fill, dtype))
            continue
        if not jnp.issubdtype(jnp.result_type(b), jnp.number) or jnp.iscomplexobj(b):
            raise TypeError(
                f"{call}: bounds {name} at {_show(path)} must be real numbers; "
                f"got {b!r}."
            )
        try:
            full = jnp.broadcast_to(jnp.asarray(b, dtype), jnp.shape(x))
        except ValueError:
            raise ValueError(
                f"{call}: bounds {name} at {_show(path)} has shape "
                f"{jnp.shape(b)}, which does not broadcast to the parameter's "
                f"shape {jnp.shape(x)}."
            ) from None
        out.append(full)
    unused = [p for p in entries if p not in used]
    if unused:
        raise ValueError(
            f"{call}: bounds {name} has an entry {_show(unused[0])} that matches "
            "no parameter; the parameters' paths are "
            f"{[_show(_path(p)) for p, _ in flat][:6]}."
        )
    return jax.tree_util.tree_unflatten(treedef, out)


def normalize(call: str, bounds: Any, params: PyTree) -> tuple[PyTree, PyTree]:
    """Check ``bounds=(lower, upper)`` and broadcast both against ``params``.

    Raises:
        TypeError: ``bounds`` is not a pair, or a leaf is not a real number.
        ValueError: a path or shape does not match, or ``lower > upper``
            somewhere (the leaf and the values are named).
    """
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise TypeError(
            f"{call}: bounds must be a pair (lower, upper), each a scalar, None "
            f"or a pytree shaped like the parameters; got {bounds!r}."
        )
    lower = _broadcast(call, "lower", bounds[0], params)
    upper = _broadcast(call, "upper", bounds[1], params)
    flat = jax.tree_util.tree_flatten_with_path(lower)[0]
    for (p, lo), up in zip(flat, jax.tree.leaves(upper), strict=True):
        if isinstance(lo, jax.core.Tracer) or isinstance(up, jax.core.Tracer):
            continue
        bad = np.asarray(lo > up) | np.isnan(np.asarray(lo)) | np.isnan(np.asarray(up))
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), bad.shape) if bad.shape else ()
            raise ValueError(
                f"{call}: bounds lower > upper (or nan) at {_show(_path(p))}"
                f"{list(i) if i else ''}: lower={np.asarray(lo)[i]!r}, "
                f"upper={np.asarray(up)[i]!r}. Each lower bound must be <= its "
                "upper bound (equal fixes the value)."
            )
    return lower, upper


def is_unbounded(lower: PyTree, upper: PyTree) -> bool:
    """Whether every bound is known (not traced) to be infinite."""
    for lo, up in zip(jax.tree.leaves(lower), jax.tree.leaves(upper), strict=True):
        if isinstance(lo, jax.core.Tracer) or isinstance(up, jax.core.Tracer):
            return False
        if not (np.all(np.isneginf(lo)) and np.all(np.isposinf(up))):
            return False
    return True


def project(x: PyTree, bounds: tuple[PyTree, PyTree]) -> PyTree:
    """The point of the box nearest to ``x`` (leaf-wise clip)."""
    lower, upper = bounds
    return jax.tree.map(
        lambda v, lo, up: jnp.minimum(jnp.maximum(v, lo), up).astype(v.dtype),
        x,
        lower,
        upper,
    )


def projected_grad_norm(
    x: PyTree, g: PyTree, bounds: tuple[PyTree, PyTree], dtype: Any
) -> jax.Array:
    """``||P(x - g) - x||_inf``: zero exactly at a stationary point of the box."""
    step = jax.tree.map(lambda a, b: a - b, x, g)
    moved = jax.tree.map(lambda p, v: jnp.abs(p - v), project(step, bounds), x)
    norms = [jnp.max(v, initial=0).astype(dtype) for v in jax.tree.leaves(moved)]
    return jnp.max(jnp.stack(norms)) if norms else jnp.zeros((), dtype)


def honours_bounds(state: PyTree, params: PyTree) -> bool:
    """Whether a transform's state declares ``bounds=`` support (trace time)."""
    return bool(find_fields(state, FIELD, params))


def check_transform(call: str, tx: Any, params: PyTree) -> None:
    """Raise a ``TypeError`` if ``tx`` cannot keep its iterates in a box."""
    state = jax.eval_shape(tx.init, params)
    if not honours_bounds(state, params):
        raise TypeError(
            f"{call}: bounds= needs a transform that keeps its iterates in the "
            f"box, such as nnxopt.lbfgsb() (tx=None picks it); got tx={tx!r}, "
            "which cannot honour bounds. Drop tx= or pass tx=nnxopt.lbfgsb(...)."
        )


def check_start(call: str, params: PyTree) -> None:
    """The projected start must be finite (skipped for traced values)."""
    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(x, jax.core.Tracer):
            continue
        if not np.all(np.isfinite(np.asarray(x))):
            raise ValueError(
                f"{call}: the start projected into the box is not finite at "
                f"{_show(_path(p))}: {np.asarray(x)!r}. Start from finite values "
                "(an infinite start stays infinite on an infinite bound)."
            )


def attach(kwargs: dict, bounds: tuple[PyTree, PyTree] | None) -> dict:
    """``kwargs`` with the bounds under the private :data:`KEY`."""
    return kwargs if bounds is None else {**kwargs, KEY: bounds}


def detach(kwargs: dict) -> tuple[dict, Any]:
    """Split the bounds off ``kwargs`` (``None`` if absent)."""
    if KEY not in kwargs:
        return kwargs, None
    kwargs = dict(kwargs)
    return kwargs, kwargs.pop(KEY)


def setup(
    call: str, params: PyTree, bounds: Any, tx: Any
) -> tuple[Any, tuple[PyTree, PyTree] | None]:
    """``(tx, box)`` for a solve given ``bounds=`` (call time).

    ``tx=None`` with bounds picks ``nnxopt.lbfgsb()``; a given ``tx`` must
    honour bounds. Bounds known to be infinite everywhere give ``box=None``:
    the unbounded solve, exactly.
    """
    if bounds is None:
        return tx, None
    lower, upper = normalize(call, bounds, params)
    if is_unbounded(lower, upper):
        return tx, None
    if tx is None:
        tx = default_lbfgsb()
    check_transform(call, tx, params)
    check_start(call, project(params, (lower, upper)))
    return tx, (lower, upper)


def default_lbfgsb() -> Any:
    """One ``nnxopt.lbfgsb()`` object (the compile cache keys on it)."""
    global _DEFAULT
    if _DEFAULT is None:
        from ._lbfgsb import lbfgsb

        _DEFAULT = lbfgsb()
    return _DEFAULT


_DEFAULT: Any = None
