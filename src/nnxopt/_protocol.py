"""The protocol between the solve loop and a transform, stated in one place.

The loop (``nnxopt.solve``, ``nnxopt.minimize``, ``nnxopt.Solver``,
``Optimizer.minimize_step``) learns what a transform can do from **named fields
of its state**, found anywhere in the state's tree of NamedTuples (as
``optax.tree.get`` finds them; copies of the parameters inside the state are
not searched). A field is used only if exactly one is found. The fields:

``value`` (scalar) and ``grad`` (a pytree shaped like the parameters)
    The loss and gradient at the point the update moved to. With both, the
    loop *reuses* them and makes no evaluation of its own per iteration.
``learning_rate`` (scalar)
    The step the transform's line search accepted. It marks a line-search
    transform: ``ftol`` applies, and a zero step, or a step that raises
    ``value``, counts as a failed search (unless ``status`` says more).
``status`` (``int32`` scalar, a :class:`nnxopt.linesearch.SearchStatus` code)
    The outcome of the last search; ``LINESEARCH_FAILED`` and ``NON_FINITE`` are
    failures; so is ``AT_ROUNDOFF`` (no decrease resolvable in the loss's
    precision), but a solve whose last try ends so reports
    ``Status.CONVERGED_ROUNDOFF`` instead of ``LINESEARCH_FAILED``.
``num_value_evals`` and ``num_grad_evals`` (``int32`` scalars)
    The loss and gradient evaluations the last update made (a value evaluated
    together with its gradient counts once in each). They become ``nfev`` and
    ``njev``. optax's own searches, whose states are the public
    ``optax.ScaleByZoomLinesearchState`` and
    ``optax.ScaleByBacktrackingLinesearchState``, are counted from their
    ``num_linesearch_steps`` (zoom: a value and gradient per step;
    backtracking: a value per step and, with ``store_grad=True``, one gradient).
``num_active`` (``int32`` scalar)
    The parameters on a bound. Its presence declares that the transform
    keeps its iterates in a box (``nnxopt.lbfgsb``): only such a transform is
    accepted with ``bounds=``, and it receives ``bounds=(lower, upper)`` (pytrees
    shaped like the parameters) as an extra keyword of ``update``.
``num_resets`` (``int32``)
    The transform discards its curvature memory after a failed search
    (``nnxopt.lbfgs``), so the loop lets it try once more before stopping with
    ``LINESEARCH_FAILED``.

Every ``optax.GradientTransformationExtraArgs`` receives the keywords
``value``, ``grad``, ``value_fn`` and ``obj_fn`` (both functions of the
parameters alone; ``value_fn`` also accepts and ignores an ``obj_fn`` keyword,
which optax's searches forward to it); by optax's convention its ``update``
accepts ``**extra_args``. A plain
``optax.GradientTransformation`` receives none. A transform with none of the
fields above still works: the loop evaluates the loss and gradient at each new
point itself (one evaluation per iteration) and stops on ``gtol``,
``maxiter``, ``maxfev`` or a non-finite value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ._status import SearchStatus

PyTree = Any
_INT = jnp.int32
_FAILED = (int(SearchStatus.LINESEARCH_FAILED), int(SearchStatus.NON_FINITE))
_ROUNDOFF = int(SearchStatus.AT_ROUNDOFF)


def find_fields(state: PyTree, name: str, params: PyTree) -> list[Any]:
    """Return every NamedTuple field ``name`` in ``state`` (trace time).

    Subtrees with the parameters' structure (the transform's copies of the
    parameters, its gradients and memories) are not searched: a parameter
    dict with a key ``"value"`` is not a field.
    """
    found: list[Any] = []
    params_def = jax.tree.structure(params)

    def walk(node: Any) -> None:
        if not isinstance(node, tuple | list):
            return
        if jax.tree.structure(node) == params_def:
            return
        fields = getattr(node, "_fields", None)
        for i, child in enumerate(node):
            if fields is not None and fields[i] == name:
                found.append(child)
            else:
                walk(child)

    walk(state)
    return found


def _one(state: PyTree, name: str, params: PyTree, scalar: bool = True) -> Any:
    found = [
        x
        for x in find_fields(state, name, params)
        if x is not None and (not scalar or jnp.shape(x) == ())
    ]
    return found[0] if len(found) == 1 else None


def _optax_search(state: PyTree) -> tuple[str, Any] | None:
    """optax's public line-search states: ``(kind, node)`` if exactly one."""
    kinds = (
        ("zoom", optax.ScaleByZoomLinesearchState),
        ("backtracking", optax.ScaleByBacktrackingLinesearchState),
    )

    def is_search(x: Any) -> bool:
        return any(isinstance(x, cls) for _, cls in kinds)

    nodes = [x for x in jax.tree.leaves(state, is_leaf=is_search) if is_search(x)]
    if len(nodes) != 1:
        return None
    kind = next(k for k, cls in kinds if isinstance(nodes[0], cls))
    return kind, nodes[0]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the loop may rely on, read from a transform's state structure.

    Built at trace time by :meth:`of`; its methods read the values from a state
    of the same structure.

    Attributes:
        reuse: the state stores ``value`` and ``grad`` at the new point.
        search: the transform runs a line search (``learning_rate``).
        status: the state reports a search ``status``.
        counts: ``"fields"`` (``num_value_evals``/``num_grad_evals``), ``"zoom"``,
            ``"backtracking"`` (optax's states) or ``None`` (no evaluations).
        retries: failed searches in a row the loop tolerates before stopping.
    """

    reuse: bool
    search: bool
    status: bool
    counts: str | None
    retries: int

    @classmethod
    def of(cls, state: PyTree, params: PyTree) -> Capabilities:
        """Read the capabilities from the structure of ``state`` (trace time)."""
        grad = _one(state, "grad", params, scalar=False)
        reuse = (
            _one(state, "value", params) is not None
            and grad is not None
            and jax.tree.structure(grad) == jax.tree.structure(params)
        )
        optax_search = _optax_search(state)
        if _one(state, "num_value_evals", params) is not None:
            counts: str | None = "fields"
        else:
            counts = None if optax_search is None else optax_search[0]
        resets = _one(state, "num_resets", params) is not None
        return cls(
            reuse=reuse,
            search=_one(state, "learning_rate", params) is not None,
            status=_one(state, "status", params) is not None,
            counts=counts,
            retries=2 if resets else 1,
        )

    def stored(self, state: PyTree, params: PyTree) -> tuple[jax.Array, PyTree]:
        """The ``(value, grad)`` stored in ``state`` (``reuse`` only)."""
        value = _one(state, "value", params)
        return jnp.asarray(value), _one(state, "grad", params, scalar=False)

    def learning_rate(self, state: PyTree, params: PyTree, dtype: Any) -> jax.Array:
        """The accepted step, ``nan`` if the transform reports none."""
        lr = _one(state, "learning_rate", params)
        return jnp.asarray(jnp.nan if lr is None else lr, dtype)

    def evaluations(self, state: PyTree, params: PyTree) -> tuple[jax.Array, jax.Array]:
        """``(value, gradient)`` evaluations made by the last update."""
        zero = jnp.zeros((), _INT)
        if self.counts == "fields":
            nv = _one(state, "num_value_evals", params)
            ng = _one(state, "num_grad_evals", params)
            nv = jnp.asarray(nv, _INT)
            return nv, (nv if ng is None else jnp.asarray(ng, _INT))
        found = _optax_search(state)
        if self.counts is None or found is None:
            return zero, zero
        steps = jnp.asarray(found[1].info.num_linesearch_steps, _INT)
        if self.counts == "zoom":
            return steps, steps
        return steps, jnp.asarray(found[1].grad is not None, _INT)

    def failed(
        self,
        state: PyTree,
        params: PyTree,
        lr: jax.Array,
        value: jax.Array,
        previous: jax.Array,
    ) -> jax.Array:
        """Whether the last line search failed (``False`` without a search)."""
        if not self.search:
            return jnp.asarray(False)
        if self.status:
            code = jnp.asarray(_one(state, "status", params), _INT)
            return (code == _FAILED[0]) | (code == _FAILED[1])
        return (lr == 0) | (value > previous)

    def at_roundoff(self, state: PyTree, params: PyTree) -> jax.Array:
        """Whether the last search found no decrease resolvable in the loss's
        precision (``AT_ROUNDOFF``; ``False`` without a search status)."""
        if not (self.search and self.status):
            return jnp.asarray(False)
        return jnp.asarray(_one(state, "status", params), _INT) == _ROUNDOFF


def extra_args(
    tx: optax.GradientTransformation,
    value: jax.Array,
    grad: PyTree,
    value_fn: Any,
) -> dict[str, Any]:
    """The keywords the loop passes to ``tx.update`` (see the module docstring)."""
    if not isinstance(tx, optax.GradientTransformationExtraArgs):
        return {}

    # optax's searches pass value_fn the extra keywords its signature names:
    # naming obj_fn here consumes it.
    def fn(params: PyTree, obj_fn: Any = None) -> Any:
        del obj_fn
        return value_fn(params)

    return dict(value=value, grad=grad, value_fn=fn, obj_fn=fn)
