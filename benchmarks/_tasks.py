"""Benchmark tasks: every problem as an NNX model, a pytree loss and a flat loss.

A :class:`Task` wraps one problem of ``nnxopt.problems`` so that every solver
sees the same mathematics in the form it expects:

- ``make_model()`` / ``loss_fn(model, *batch, flag)``: for NNX-level solvers
  (``nnx.Optimizer``, ``nnxopt``). Flat problems become a one-``Param`` module.
- ``tree_fn(params, flag)``: a pure function of the ``Param`` pytree (optax,
  jaxopt, optimistix).
- ``flat_fn(x, flag)``: a function of one flat vector (scipy).
- ``torch_fn(x)``: the same objective on a torch tensor (flat problems only).

Every loss goes through :func:`probe`, which counts evaluations on the host when
the run-time ``flag`` is positive (one compiled program serves the counted run
and the timed runs): a plain evaluation counts one value; an evaluation under
differentiation (``jax.grad``, ``jax.linearize``) counts one value and one
gradient. The values are recorded in order, for the "to target" metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from benchmarks.scipy_reference import SCIPY_REFERENCE
from nnxopt import problems


class Counter:
    """Host-side record of objective evaluations: ``(with_grad, value)`` pairs."""

    def __init__(self) -> None:
        self.events: list[tuple[bool, float]] = []

    def reset(self) -> None:
        """Forget every recorded evaluation."""
        self.events = []

    def record(self, with_grad: bool, value: Any) -> None:
        """Record one evaluation (called from a JAX host callback)."""
        self.events.append((with_grad, float(value)))

    @property
    def nfev(self) -> int:
        """Number of objective values computed (with or without gradient)."""
        return len(self.events)

    @property
    def njev(self) -> int:
        """Number of gradients computed."""
        return sum(1 for g, _ in self.events if g)

    def values(self) -> np.ndarray:
        """Objective values in evaluation order."""
        return np.asarray([v for _, v in self.events], dtype=np.float64)


COUNTER = Counter()


def _tick(with_grad: bool, value: jax.Array, flag: jax.Array) -> None:
    def cb(v):
        COUNTER.record(with_grad, v)

    jax.lax.cond(flag > 0, lambda v: jax.debug.callback(cb, v), lambda v: None, value)


@jax.custom_jvp
def probe(value: jax.Array, flag: jax.Array) -> jax.Array:
    """Return ``value`` unchanged; count it on the host when ``flag > 0``."""
    _tick(False, value, flag)
    return value


@probe.defjvp
def _probe_jvp(primals, tangents):
    value, flag = primals
    _tick(True, value, flag)
    return value, tangents[0]


class VectorModel(nnx.Module):
    """One ``nnx.Param`` holding a flat parameter vector."""

    def __init__(self, x0: np.ndarray, dtype: Any):
        self.x = nnx.Param(jnp.asarray(x0, dtype=dtype))


@dataclasses.dataclass
class Task:
    """One benchmark problem in every form the solvers need."""

    name: str
    family: str  # "mgh", "data" or "nnx"
    make_model: Callable[[], Any]
    raw_loss: Callable[..., jax.Array]
    batch: tuple
    f_star: float | None
    f_ref: float | None  # what scipy L-BFGS-B reaches (float64 reference)
    torch_fn: Callable[[Any], Any] | None = None
    x0_flat: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        model = self.make_model()
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params0 = nnx.as_pure(params)
        self.rest = nnx.as_pure(rest)
        flat, self.unravel = ravel_pytree(self.params0)
        self.x0_flat = np.asarray(flat, dtype=np.float64)
        self.dtype = flat.dtype
        self._plain_vg = jax.jit(jax.value_and_grad(self.flat_fn))

    @property
    def n(self) -> int:
        """Number of parameters."""
        return int(self.x0_flat.shape[0])

    def loss_fn(self, model: Any, *args: Any) -> jax.Array:
        """Model-level counted loss: ``loss_fn(model, *batch, flag)``."""
        *batch, flag = args
        return probe(self.raw_loss(model, *batch), flag)

    def tree_fn(self, params: Any, flag: Any = 0.0) -> jax.Array:
        """Counted loss of the pure ``Param`` pytree (``rest`` is a snapshot)."""
        model = nnx.merge(self.graphdef, params, self.rest)
        return self.loss_fn(model, *self.batch, jnp.asarray(flag, jnp.float32))

    def flat_fn(self, x: jax.Array, flag: Any = 0.0) -> jax.Array:
        """Counted loss of one flat vector."""
        return self.tree_fn(self.unravel(x.astype(self.dtype)), flag)

    def to_flat(self, params: Any) -> np.ndarray:
        """Flatten a ``Param`` pytree (or an NNX model) to float64 numpy."""
        if isinstance(params, nnx.Module):
            params = nnx.as_pure(nnx.state(params, nnx.Param))
        return np.asarray(ravel_pytree(params)[0], dtype=np.float64)

    def evaluate(self, x_flat: np.ndarray) -> tuple[float, float]:
        """Return ``(f, ||grad||_inf)`` at a flat point (uncounted)."""
        f, g = self._plain_vg(jnp.asarray(x_flat, dtype=self.dtype), 0.0)
        return float(f), float(jnp.max(jnp.abs(g)))


def _flat_task(p: Any, family: str, dtype: Any, refs: dict) -> Task:
    ref = refs.get(p.name)

    def raw_loss(model):
        return p.fn(model.x[...])

    return Task(
        name=p.name,
        family=family,
        make_model=lambda: VectorModel(p.x0, dtype),
        raw_loss=raw_loss,
        batch=(),
        f_star=p.f_star,
        f_ref=None if ref is None else ref.fun,
        torch_fn=p.fn,
    )


def _nnx_task(q: Any, refs: dict) -> Task:
    ref = refs.get(q.name)
    return Task(
        name=q.name,
        family="nnx",
        make_model=q.make_model,
        raw_loss=q.loss_fn,
        batch=tuple(q.batch),
        f_star=q.f_star,
        f_ref=None if ref is None else ref.fun,
    )


#: ``--quick``: the CI smoke test (two cheap problems, seconds each).
QUICK = ("rosenbrock", "logistic500x20")

#: The default run: every family, the known scipy/optax failures, < 10 min on
#: 2 CPU cores (compilation and the Python-loop solvers on the NNX models
#: dominate: 11 problems took 577 s, these 10 about 550 s).
#: ``--full`` runs all problems of ``nnxopt.problems``.
DEFAULT = (
    "rosenbrock",
    "powell_badly_scaled",
    "meyer",
    "wood",
    "watson9",
    "least_squares200x50",
    "logistic500x20",
    "mlp_sin_w32d1",
    "pinn1d_w16d2",
    "batchnorm_w32",
)

#: ``--suite nnx``: the NNX workloads (run it with ``--dtype float32`` too).
NNX = ("mlp_sin_w32d1", "pinn1d_w16d2", "pinn2d_w16d2", "batchnorm_w32")

#: ``--suite sizes``: tanh MLPs (3 hidden layers) from 10^3 to 10^5 parameters,
#: for how the cost per evaluation grows with size (no scipy reference: no
#: "to target" view; run with a fixed ``--maxiter`` and ``--gtol 0``).
SIZES = {"mlp_sin_w20d3": 20, "mlp_sin_w70d3": 70, "mlp_sin_w220d3": 220}

SUITES = ("default", "quick", "full", "nnx", "sizes")


def build_tasks(
    names: list[str] | None = None,
    quick: bool = False,
    full: bool = False,
    dtype: Any = jnp.float64,
    suite: str = "default",
) -> list[Task]:
    """Return the benchmark tasks (named, or those of ``suite``), in order.

    ``quick`` and ``full`` are the ``"quick"`` and ``"full"`` suites.
    """
    refs = SCIPY_REFERENCE
    suite = "quick" if quick else "full" if full else suite
    if suite not in SUITES:
        raise ValueError(f"build_tasks: unknown suite {suite!r}; known: {SUITES}")
    sized = [
        problems.mlp_regression(width=w, depth=3, dtype=dtype) for w in SIZES.values()
    ]
    if names:
        wanted: set[str] | None = set(names)
    elif suite == "sizes":
        return [_nnx_task(q, refs) for q in sized]
    else:
        wanted = {"quick": set(QUICK), "full": None, "nnx": set(NNX)}.get(
            suite, set(DEFAULT)
        )
    tasks = []
    for p in problems.flat_problems():
        if wanted is None or p.name in wanted:
            family = (
                "mgh" if p.residuals is not None and "least" not in p.name else "data"
            )
            tasks.append(_flat_task(p, family, dtype, refs))
    for q in problems.nnx_problems(dtype):
        if wanted is None or q.name in wanted:
            tasks.append(_nnx_task(q, refs))
    if names:
        tasks += [_nnx_task(q, refs) for q in sized if q.name in wanted]  # type: ignore[operator]
    return tasks
