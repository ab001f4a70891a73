"""Caches of compiled functions, keyed on structure rather than identity.

Every ``optax.lbfgs()`` call builds new closures, so keying a cache on the
transform object recompiles for each new but identical transform. Here a
transform is keyed on what it *is*: the code of its functions and the values
their closures capture, recursively.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np

_COMPILED: dict[Hashable, Any] = {}
_MAX_ENTRIES = 256


def compiled(key: Hashable, factory: Callable[[], Any]) -> Any:
    """Return the cached value for ``key``, building it with ``factory`` once."""
    try:
        return _COMPILED[key]
    except KeyError:
        pass
    except TypeError:  # unhashable key: no caching
        return factory()
    if len(_COMPILED) >= _MAX_ENTRIES:
        _COMPILED.pop(next(iter(_COMPILED)))
    value = _COMPILED[key] = factory()
    return value


class _Key:
    """A structural key with its hash computed once (tuples recompute theirs,
    which for a transform's deep key costs more than the rest of a call)."""

    __slots__ = ("_hash", "key")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self._hash = hash(key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, _Key)
            and self._hash == other._hash
            and self.key == other.key
        )


@functools.lru_cache(maxsize=256)
def transform_key(tx: Any) -> Hashable:
    """``structural_key(tx)``, memoised per transform object (they are hashable)."""
    return _Key(structural_key(tx))


def structural_key(obj: Any, _depth: int = 0) -> Hashable:
    """Return a hashable key equal for transforms built the same way.

    Example:
        >>> import optax
        >>> structural_key(optax.lbfgs()) == structural_key(optax.lbfgs())
        True
        >>> structural_key(optax.adam(1e-3)) == structural_key(optax.adam(1e-2))
        False
    """
    if _depth > 24:
        return ("id", id(obj))
    d = _depth + 1
    if obj is None or isinstance(obj, bool | int | float | complex | str | bytes):
        return (type(obj).__name__, obj)
    if isinstance(obj, type):
        return ("type", obj.__module__, obj.__qualname__)
    if isinstance(obj, functools.partial):
        return (
            "partial",
            structural_key(obj.func, d),
            tuple(structural_key(a, d) for a in obj.args),
            tuple(sorted((k, structural_key(v, d)) for k, v in obj.keywords.items())),
        )
    if isinstance(obj, types.FunctionType):
        cells = tuple(
            structural_key(_cell_contents(c), d) for c in (obj.__closure__ or ())
        )
        defaults = tuple(structural_key(v, d) for v in (obj.__defaults__ or ()))
        kwdefaults = tuple(
            sorted(
                (k, structural_key(v, d)) for k, v in (obj.__kwdefaults__ or {}).items()
            )
        )
        return ("fn", obj.__code__, cells, defaults, kwdefaults)
    if isinstance(obj, types.MethodType):
        return (
            "method",
            structural_key(obj.__func__, d),
            structural_key(obj.__self__, d),
        )
    if isinstance(obj, tuple | list):
        return (type(obj).__name__, tuple(structural_key(x, d) for x in obj))
    if isinstance(obj, dict):
        try:
            items = sorted(obj.items())
        except TypeError:
            return ("id", id(obj))
        return ("dict", tuple((k, structural_key(v, d)) for k, v in items))
    if isinstance(obj, jax.core.Tracer):  # no value to key on
        return ("id", id(obj))
    if isinstance(obj, jax.Array | np.ndarray | np.generic):
        arr = np.asarray(obj)
        if arr.size <= 4096:
            return ("array", arr.shape, str(arr.dtype), arr.tobytes())
        return ("id", id(obj))
    try:
        hash(obj)
    except TypeError:
        return ("id", id(obj))
    return ("obj", type(obj).__qualname__, obj)


def _cell_contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None
