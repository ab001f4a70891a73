"""Turn ``(model, loss_fn, wrt)`` into pure functions of the ``wrt`` parameters.

This is the one place where NNX meets the algorithms. A model is split once into

- ``params``: the ``wrt`` Variables as a pure pytree (what optax transforms see),
- ``rest``: every other Variable (BatchNorm statistics, RNG streams, counters,
  frozen weights) as a pure pytree: a *snapshot*,

and the loss becomes ``f(params) -> (loss, (aux, new_rest))``, evaluated on a
fresh model merged from ``params`` and the snapshot. Trial evaluations therefore
never write the user's model: whatever ``loss_fn`` writes lands in ``new_rest``,
and the caller decides what to commit (exactly once per iteration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Objective:
    """A model-level loss as pure functions of ``(params, rest)``.

    Attributes:
        graphdef: the static structure of the model.
        wrt: the NNX filter of the trainable Variables.
        loss_fn: ``loss_fn(model, *args, **kwargs)``: a scalar, or ``(scalar, aux)``
            when ``has_aux``.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        graph: NNX graph mode (``True``), tree mode (``False``) or the context's
            default (``None``).
        call: the public call, for error messages (e.g. ``"nnxopt.minimize"``).
    """

    graphdef: Any
    wrt: Any
    loss_fn: Callable[..., Any]
    has_aux: bool = False
    graph: bool | None = None
    call: str = "nnxopt"

    def merge(self, params: PyTree, rest: PyTree) -> Any:
        """Build a fresh model from ``params`` and a ``rest`` snapshot."""
        return nnx.merge(self.graphdef, params, rest)

    def evaluate(
        self, params: PyTree, rest: PyTree, args: tuple = (), kwargs: dict | None = None
    ) -> tuple[jax.Array, tuple[Any, PyTree]]:
        """Return ``(loss, (aux, new_rest))`` at ``params`` without touching ``rest``."""
        model = self.merge(params, rest)
        out = self.loss_fn(model, *args, **(kwargs or {}))
        loss, aux = self._unpack(out)
        _, _, *others = nnx.split(model, self.wrt, ..., graph=self.graph)
        new_rest = others[0]
        return loss, (aux, nnx.as_pure(new_rest))

    def value_and_grad(
        self, params: PyTree, rest: PyTree, args: tuple = (), kwargs: dict | None = None
    ) -> tuple[tuple[jax.Array, tuple[Any, PyTree]], PyTree]:
        """Return ``((loss, (aux, new_rest)), grad)`` with ``grad`` shaped like ``params``."""
        return jax.value_and_grad(self.evaluate, has_aux=True)(
            params, rest, args, kwargs
        )

    def value_fn(
        self, rest: PyTree, args: tuple = (), kwargs: dict | None = None
    ) -> Callable[[PyTree], jax.Array]:
        """Return ``params -> loss`` on the ``rest`` snapshot (for line searches)."""

        def fn(params: PyTree) -> jax.Array:
            return self.evaluate(params, rest, args, kwargs)[0]

        return fn

    def writes_state(
        self, params: PyTree, rest: PyTree, args: tuple = (), kwargs: dict | None = None
    ) -> bool:
        """Return whether ``loss_fn`` writes any non-``wrt`` Variable (trace time).

        Traces the loss once and checks whether every ``new_rest`` leaf is the very
        input leaf it came from. BatchNorm in training mode, Dropout (RNG counters)
        and user counters write; a frozen layer or BatchNorm in eval mode does not.
        """
        n_rest = len(jax.tree.leaves(rest))
        if n_rest == 0:
            return False

        def rest_out(p: PyTree, r: PyTree) -> PyTree:
            return self.evaluate(p, r, args, kwargs)[1][1]

        closed = jax.make_jaxpr(rest_out)(params, rest)
        n_params = len(jax.tree.leaves(params))
        inputs = closed.jaxpr.invars[n_params : n_params + n_rest]
        outputs = closed.jaxpr.outvars
        if len(outputs) != n_rest:
            return True
        return not all(o is i for o, i in zip(outputs, inputs))

    def _unpack(self, out: Any) -> tuple[jax.Array, Any]:
        return unpack_loss(self.call, out, self.has_aux, "loss_fn")


def unpack_loss(call: str, out: Any, has_aux: bool, name: str) -> tuple[jax.Array, Any]:
    """Split a loss function's output into ``(loss, aux)``, checking it (trace time).

    Raises:
        TypeError: a pair expected with ``has_aux`` and not returned, or a tuple
            returned without ``has_aux``.
        ValueError: the loss is not a real floating-point scalar.
    """
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                f"{call}: with has_aux=True, {name} must return a pair "
                f"(loss, aux); it returned {_describe(out)}. Return "
                "`loss, aux` or pass has_aux=False."
            )
        loss, aux = out
    else:
        loss, aux = out, None
        if isinstance(out, tuple):
            raise TypeError(
                f"{call}: {name} returned a tuple of {len(out)} items; "
                "it must return a scalar loss. If the extra items are auxiliary "
                "outputs, return `(loss, aux)` and pass has_aux=True."
            )
    loss = jnp.asarray(loss) if not isinstance(loss, jax.Array) else loss
    if loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(
            f"{call}: {name} must return a real floating-point scalar; it "
            f"returned {_describe(loss)}. Reduce it, e.g. with `.mean()` or "
            "`.sum()`, and keep it floating-point."
        )
    return loss, aux


def split_model(
    model: Any, wrt: Any, graph: bool | None, call: str
) -> tuple[Any, PyTree, PyTree]:
    """Split ``model`` into ``(graphdef, params, rest)`` as pure pytrees.

    Raises:
        TypeError: if ``model`` is not an NNX object or ``wrt`` selects
            non-floating Variables.
        ValueError: if ``wrt`` selects no Variable.
    """
    if not isinstance(model, nnx.Module | nnx.Pytree):
        raise TypeError(
            f"{call}: model must be a flax.nnx Module; got {type(model).__name__!r}. "
            "Pass the nnx.Module whose Variables you want to optimize."
        )
    graphdef, params, *others = nnx.split(model, wrt, ..., graph=graph)
    rest = others[0]
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(
            f"{call}: wrt={wrt!r} selects no Variable of {type(model).__name__}. "
            "Use the Variable type your trainable weights have (nnx.Param by "
            "default, nnx.LoRAParam for LoRA adapters) or a filter that matches it."
        )
    if all(jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves):
        return graphdef, params, rest
    bad = {
        "/".join(map(str, path)): str(leaf.dtype)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)
    }
    raise TypeError(
        f"{call}: wrt={wrt!r} selects Variables that cannot be differentiated "
        f"(non-floating dtypes): {bad!r}. Narrow wrt to floating-point "
        "Variables, e.g. nnx.Param, or store these values in another "
        "Variable type."
    )


def _describe(x: Any) -> str:
    if isinstance(x, jax.Array | jax.ShapeDtypeStruct) or hasattr(x, "shape"):
        return f"an array of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:200]
