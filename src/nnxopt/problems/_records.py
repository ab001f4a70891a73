"""Records and array-namespace helpers of the problem library.

Every objective is written once for ``jax.numpy`` and ``torch`` (the namespace
is picked from the type of ``x``), so that a PyTorch peer optimises exactly the
same mathematics; torch is never imported here.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any

# ---------------------------------------------------------------------------
# Array-namespace helpers: the same formula on jax.numpy and on torch.
# ---------------------------------------------------------------------------


def _is_torch(x: Array) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def xp_of(x: Array) -> Any:
    """Return the array namespace of ``x``: ``torch`` for tensors, else ``jax.numpy``."""
    return sys.modules["torch"] if _is_torch(x) else jnp


def _const(x: Array, values: Any) -> Array:
    """Return ``values`` as an array of ``x``'s namespace and dtype."""
    if _is_torch(x):
        return sys.modules["torch"].as_tensor(np.asarray(values), dtype=x.dtype)
    return jnp.asarray(np.asarray(values), dtype=x.dtype)


def _index(x: Array, start: int, stop: int) -> Array:
    """Return ``[start, ..., stop - 1]`` as floats of ``x``'s namespace and dtype."""
    return _const(x, np.arange(start, stop, dtype=np.float64))


def _stack(x: Array, items: Sequence[Array]) -> Array:
    return xp_of(x).stack(list(items))


def _cat(x: Array, items: Sequence[Array]) -> Array:
    return xp_of(x).concatenate(list(items))


def _sum_of_squares(residuals: Callable[[Array], Array]) -> Callable[[Array], Array]:
    def fn(x: Array) -> Array:
        r = residuals(x)
        return (r * r).sum()

    return fn


# ---------------------------------------------------------------------------
# Problem records.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """A smooth unconstrained problem on a flat parameter vector.

    Attributes:
        name: unique short name (the key of :data:`SCIPY_REFERENCE`).
        fn: ``fn(x) -> scalar`` for a 1-D array ``x`` (jax or torch).
        x0: the standard starting point, float64 numpy array of shape ``(n,)``.
        f_star: the known minimum of the basin reached from ``x0`` (published
            value, or closed form), or ``None`` when unknown.
        x_star: a known minimiser in closed form, or ``None``.
        f_global: the global minimum where it differs from ``f_star``.
        residuals: ``residuals(x) -> (m,)`` for sum-of-squares problems, so that
            ``fn(x) == sum(residuals(x) ** 2)``; ``None`` otherwise.
        f_star_rtol: relative accuracy of the published ``f_star`` (MGH print
            six digits).
        notes: provenance and known difficulties.
    """

    name: str
    fn: Callable[[Array], Array]
    x0: np.ndarray
    f_star: float | None
    x_star: np.ndarray | None = None
    f_global: float | None = None
    residuals: Callable[[Array], Array] | None = None
    f_star_rtol: float = 1e-5
    notes: str = ""

    @property
    def n(self) -> int:
        """Number of parameters."""
        return int(self.x0.shape[0])

    def x0_as(self, dtype: Any = jnp.float64) -> jax.Array:
        """Return ``x0`` as a jax array of ``dtype``."""
        return jnp.asarray(self.x0, dtype=dtype)


def _mgh(
    name: str,
    residuals: Callable[[Array], Array],
    x0: Sequence[float],
    f_star: float | None,
    *,
    x_star: Sequence[float] | None = None,
    f_global: float | None = None,
    notes: str = "",
) -> Problem:
    return Problem(
        name=name,
        fn=_sum_of_squares(residuals),
        x0=np.asarray(x0, dtype=np.float64),
        f_star=f_star,
        x_star=None if x_star is None else np.asarray(x_star, dtype=np.float64),
        f_global=f_global,
        residuals=residuals,
        notes=notes,
    )
