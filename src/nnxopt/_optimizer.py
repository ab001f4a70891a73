"""``nnxopt.Optimizer`` and ``nnxopt.ModelAndOptimizer``: the NNX side."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx.training.optimizer import to_opt_state

from ._cache import compiled, transform_key
from ._objective import Objective, PyTree, params_fn, split_model, tree_avals
from ._protocol import Capabilities, extra_args
from ._reuse import ReuseKey, fingerprint
from ._reuse import tree_equal as _tree_equal
from ._tree import all_finite as _all_finite
from ._tree import cast_like, describe, lowest_precision
from ._tree import combine as _combine
from ._tree import partition as _partition
from ._tree import select as _select
from ._tree import strong as _strong

M = TypeVar("M")


class Optimizer(nnx.Optimizer[M]):
    """An ``nnx.Optimizer`` that also runs L-BFGS, line searches and every optax
    transform that needs extra arguments.

    A drop-in superset of :class:`flax.nnx.Optimizer`: code written for
    ``nnx.Optimizer``, including flax's ``value_fn(state)`` for line searches,
    gives the same parameters step for step. Two things are added:

    - ``update(model, grads, value=..., value_fn=...)`` also accepts a
      ``value_fn`` (and ``obj_fn``) of the **model**, as with ``nnx.grad``; nnxopt
      builds the function of raw parameters itself, merging in the non-``wrt``
      state so that ``wrt`` subsets such as ``nnx.LoRAParam`` work. Which form a
      function has is decided by the rule documented in :meth:`update`.
    - ``minimize_step(model, loss_fn, *args)``: one complete iteration. It computes
      the loss and its gradient, supplies every extra argument the transform may
      need, reuses the value and gradient a line search already computed at the
      accepted point, applies the update and returns the loss.

    Non-finite updates never enter the model: if the new parameters are not all
    finite, parameters and optimizer state keep their previous values and
    ``step`` does not advance (``nnx.Optimizer`` writes them and counts the step:
    the one place where the numbers differ, and only on a step that would have
    put NaN or infinity into the model).

    Besides ``nnx.Optimizer``'s ``step`` and ``opt_state`` it keeps
    ``reuse_key`` (a :class:`ReuseKey`: where the transform's stored value and
    gradient hold; a copy of the ``wrt`` parameters for transforms that store
    them, see :meth:`minimize_step`), saved and restored with the rest of the
    optimizer's state.

    Args:
        model: the NNX module to optimize.
        tx: any optax ``GradientTransformation`` or
            ``GradientTransformationExtraArgs`` (adam, ``optax.lbfgs()``,
            ``nnxopt.lbfgs()``, sgd chained with a line search, polyak_sgd,
            ``contrib.reduce_on_plateau``, ``contrib.sophia``, ...).
        wrt: NNX filter of the Variables to optimize (default ``nnx.Param``).
        graph: NNX graph mode (``True``), tree mode (``False``, faster) or the
            context's default (``None``).

    Raises:
        TypeError: if ``tx`` is not an optax transform.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from flax import nnx
        >>> import nnxopt
        >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> x, y = jnp.ones((8, 2)), jnp.full((8, 1), 3.0)
        >>> def loss_fn(model):
        ...     return jnp.mean((model(x) - y) ** 2)
        >>> opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
        >>> for _ in range(5):
        ...     loss = opt.minimize_step(model, loss_fn)
        >>> bool(loss_fn(model) < 1e-8)
        True
    """

    def __init__(
        self,
        model: M,
        tx: optax.GradientTransformation,
        *,
        wrt: Any = nnx.Param,
        graph: bool | None = None,
    ):
        if not isinstance(tx, optax.GradientTransformation):
            raise TypeError(
                f"nnxopt.Optimizer: tx must be an optax GradientTransformation "
                f"(e.g. optax.adam(1e-3) or nnxopt.lbfgs()); got {tx!r}."
            )
        split_model(model, wrt, graph, "nnxopt.Optimizer")  # validate wrt early
        super().__init__(model, tx, wrt=wrt, graph=graph)
        params = nnx.as_pure(nnx.state(model, wrt, graph=graph))
        stable = _strong(nnx.as_pure(self.opt_state), lowest_precision(params))
        nnx.update(self.opt_state, nnx.state(stable, graph=graph))
        # What the optimizer was built for: checked on every call (trace time).
        self.wrt_avals = nnx.static(tree_avals(params))
        # Where the stored value and gradient hold (reuse transforms only: the
        # copy of the parameters costs memory, and others reuse nothing).
        reuse = Capabilities.of(stable, params).reuse
        stored_at = nnx.state(model, wrt, graph=graph) if reuse else None
        unset = jnp.full((3,), jnp.nan, jnp.asarray(0.0).dtype)
        self.reuse_key = nnx.data(to_opt_state(ReuseKey(stored_at, unset)))

    def update(  # type: ignore[override]
        self,
        model: M,
        grads: Any,
        /,
        *,
        value: Any = None,
        grad: Any = None,
        value_fn: Callable[[M], Any] | None = None,
        **extra: Any,
    ) -> optax.Updates:
        """Update the parameters of ``model`` from ``grads``.

        Args:
            model: the module being optimized (the one the optimizer was built for).
            grads: the gradients, as returned by ``nnx.grad`` (a State of the
                ``wrt`` Variables) or a pure pytree of the same structure.
            value: the loss at the current parameters (for line searches,
                ``polyak_sgd``, ``reduce_on_plateau``).
            grad: the gradient to pass as the ``grad`` extra argument; defaults to
                ``grads``.
            value_fn: the loss as a function of the trial parameters, in either
                form: ``value_fn(state)``, a function of the ``wrt``-filtered
                ``nnx.State`` of arrays (flax's form, what ``nnx.Optimizer`` passes:
                rebuild the model with ``nnx.merge(graphdef, state, ...)``), or
                ``value_fn(model)``, a function of the **model**, which nnxopt
                evaluates on a copy holding the trial parameters, so line-search
                trials never write the model's other state. See "Which form" below.
            **extra: further keyword arguments for ``tx.update`` (optax forwards
                those ``value_fn`` names in its signature to it). An ``obj_fn``
                given here may take either form too.

        Which form: ``nnxopt.state_fn(f)`` or ``nnxopt.model_fn(f)`` states it.
        Otherwise the first time the transform calls the function (at trace time)
        nnxopt traces it abstractly (``jax.eval_shape``: nothing is computed, no
        callback runs) with the state, then, if that raises, with the model, and
        uses the first form that traces; the decision is kept for that function
        and argument structure. So a function that works with ``nnx.Optimizer``
        is always called exactly as ``nnx.Optimizer`` calls it, and the model form
        is used only where ``nnx.Optimizer`` would fail. If neither traces, the
        error the function raised with the state (what ``nnx.Optimizer`` would
        raise) propagates, chained to the error it raised with the model, with a
        note on both. Any error the function raises later carries a note naming
        the form used and how to state it.

        Returns:
            The updates applied, shaped like the ``wrt`` parameters.

        Raises:
            TypeError: if ``tx`` needs an extra argument that was not given,
                ``grads`` does not match the ``wrt`` parameters, or ``value_fn``
                is not callable.
            ValueError: if ``model``'s ``wrt`` parameters differ in structure,
                shape or dtype from those of the model the optimizer was built
                for.
            Exception: whatever ``value_fn`` or ``obj_fn`` itself raises, with a
                note (``__notes__``) on the form nnxopt called it in.
        """
        call = f"{type(self).__name__}.update"
        graphdef, params, rest = split_model(model, self.wrt, self.graph, call)
        self._check_model(model, params, call)
        grad_arrays = _pure_grads(grads, params, self.wrt, self.graph, call)
        objective = Objective(graphdef, self.wrt, _unused, graph=self.graph, call=call)
        kwargs: dict[str, Any] = dict(extra)
        if value is not None:
            kwargs["value"] = value
        if value is not None or grad is not None or value_fn is not None:
            kwargs["grad"] = (
                grad_arrays
                if grad is None
                else _pure_grads(grad, params, self.wrt, self.graph, call)
            )
        key = (graphdef, tree_avals((params, rest)))
        for name, fn in (("value_fn", value_fn), ("obj_fn", extra.get("obj_fn"))):
            if fn is not None:
                kwargs[name] = params_fn(
                    fn, functools.partial(objective.merge, rest=rest), key, name, call
                )
        if not isinstance(self.tx, optax.GradientTransformationExtraArgs):
            kwargs = {}  # plain transforms take no extra arguments: ignore them
        opt_state = nnx.as_pure(self.opt_state)
        _check_extra_args(call, self.tx, opt_state, params, kwargs)
        updates, new_state = self.tx.update(
            grad_arrays, opt_state, params, **nnx.as_pure(kwargs)
        )
        # the state keeps its dtypes (a jitted step compiles once)
        new_state = cast_like(new_state, opt_state)
        new_params = optax.apply_updates(params, updates)
        ok = _all_finite(new_params)
        new_params = _select(ok, new_params, params)
        new_state = _select(ok, new_state, opt_state)
        nnx.update(model, new_params)
        nnx.update(self.opt_state, nnx.state(new_state, graph=self.graph))
        self.step[...] += ok.astype(self.step.dtype)
        # The transform's stored value and gradient now hold for a value_fn
        # minimize_step cannot compare its arguments with: never reuse them.
        key = self.reuse_key
        key.fingerprint[...] = jnp.full_like(key.fingerprint[...], jnp.nan)
        return updates

    def _check_model(self, model: Any, params: PyTree, call: str) -> None:
        """Raise if ``model``'s ``wrt`` parameters are not those of the model
        the optimizer was built for (trace time)."""
        if tree_avals(params) == self.wrt_avals:
            return
        recorded: Any = self.wrt_avals
        treedef, avals = recorded
        built = jax.tree.unflatten(
            treedef, [jax.ShapeDtypeStruct(s, d) for s, d in avals]
        )
        raise ValueError(
            f"{call}: model does not match the model this optimizer was built "
            f"for. Its wrt={self.wrt!r} parameters are {describe(params)}; the "
            f"optimizer's state is for {describe(built)}. Build one optimizer per "
            f"model: `nnxopt.Optimizer(model, tx, wrt=...)` with this "
            f"{type(model).__name__}."
        )

    def minimize_step(
        self,
        model: M,
        loss_fn: Callable[..., Any],
        *args: Any,
        has_aux: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Run one full optimizer iteration on ``loss_fn(model, *args, **kwargs)``.

        Evaluates the loss and its gradient with respect to ``wrt``, supplies
        ``value``, ``grad``, ``value_fn`` and ``obj_fn`` to the transform, applies
        the update and commits the model's other state once.

        - Evaluations: when the transform's state stores the ``value`` and
          ``grad`` of its accepted point (L-BFGS, line searches), they are reused
          at the next call, so an L-BFGS iteration costs exactly its line-search
          evaluations. Reuse happens only where it is valid; otherwise the call
          evaluates the loss and gradient afresh (one evaluation more). It is
          valid when (1) the model's ``wrt`` parameters are exactly, element for
          element, those the last ``minimize_step`` of this optimizer moved them
          to (so a manual edit, ``nnx.update``, a restored checkpoint or a step
          of :meth:`update` in between is seen), and (2) the call is "the same":
          the same ``loss_fn`` object and static arguments (by hash), and array
          arguments and non-``wrt`` model state with the same shapes, dtypes and
          fingerprint. The fingerprint of the arrays is two checksums, the sum
          and a pseudo-randomly weighted sum, in the default float dtype: a new
          batch, one changed element or a permutation is detected; a change below
          the rounding of those sums (relative ``~1e-7`` of ``sum(|x|)`` in
          float32) or crafted to cancel in both is not. Arrays holding NaN never
          match (always re-evaluated). The check costs one pass over the
          parameters and the arguments, fused into the step; ``python -m
          benchmarks.reuse_check`` measures its share of a step on a
          1.2k-parameter MLP on your machine. A transform
          that stores no value and gradient keeps nothing and checks nothing.
        - Non-trainable state (see the state-policy guide): line-search trials
          evaluate copies of the model on one snapshot of the non-``wrt`` state,
          so they never write it and all see the same RNG keys. If ``loss_fn``
          writes state (BatchNorm statistics, RNG counters), the loss and gradient
          are evaluated at the current parameters at the start of the iteration
          and the state that evaluation writes is committed, exactly once, as in
          an ordinary ``nnx.value_and_grad`` + ``update`` training step.

        The step runs compiled (cached per transform structure, loss function and
        shapes), with or without an enclosing ``nnx.jit`` / ``jax.jit``.

        Per-step overhead: ``nnx.jit`` flattens every Variable of the optimizer
        (L-BFGS keeps dozens) and the model on each call, which on small models
        costs more than the step itself. For the fastest loop bind both once with
        ``nnx.jit_partial(step, model, optimizer, graph=False)`` (build the
        optimizer with ``graph=False`` too): within about 1.05x of a hand-written
        jitted optax step (``python -m benchmarks.step_overhead``).

        Args:
            model: the module being optimized.
            loss_fn: ``loss_fn(model, *args, **kwargs)`` returning a scalar, or
                ``(scalar, aux)`` with ``has_aux=True``. A function of the ``wrt``
                state instead, ``loss_fn(state, *args, **kwargs)``, is stated with
                ``nnxopt.state_fn(loss_fn)`` (here the form is never guessed).
            *args: positional arguments of ``loss_fn`` (arrays are traced; other
                values are static and must be hashable).
            has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
            **kwargs: keyword arguments of ``loss_fn``.

        Returns:
            The loss at the parameters before the step, or ``(loss, aux)``.

        Raises:
            TypeError, ValueError: if ``loss_fn`` does not return a floating scalar
                (or a pair with ``has_aux``), or ``wrt`` selects nothing
                differentiable.
            ValueError: if ``model``'s ``wrt`` parameters differ in structure,
                shape or dtype from those of the model the optimizer was built
                for.
        """
        call = f"{type(self).__name__}.minimize_step"
        if not callable(loss_fn):
            raise TypeError(f"{call}: loss_fn must be callable; got {loss_fn!r}.")
        dynamic, static = _partition((args, kwargs))
        # One nnx.jit does the NNX bookkeeping of (optimizer, model) in its fast
        # path; under an enclosing jit it is simply inlined.
        runner = compiled(
            ("nnx.jit", self.graph),
            lambda: nnx.jit(_jitted_entry, static_argnums=(2, 3, 4), graph=self.graph),
        )
        held = model is getattr(self, "model", None)  # ModelAndOptimizer: no alias
        return runner(self, None if held else model, loss_fn, has_aux, static, dynamic)

    def _minimize_step_traced(
        self,
        model: M,
        loss_fn: Callable[..., Any],
        has_aux: bool,
        static: Any,
        dynamic: list,
    ) -> Any:
        call = f"{type(self).__name__}.minimize_step"
        graphdef, params, rest = split_model(model, self.wrt, self.graph, call)
        self._check_model(model, params, call)
        objective = Objective(graphdef, self.wrt, loss_fn, has_aux, self.graph, call)
        step = compiled(
            ("minimize_step", transform_key(self.tx), objective, static),
            lambda: jax.jit(functools.partial(_step, self.tx, objective, static)),
        )
        opt_state = nnx.as_pure(self.opt_state)
        reuse_key = nnx.as_pure(self.reuse_key)
        new_params, new_rest, new_state, new_key, loss, aux, ok = step(
            params, rest, opt_state, reuse_key, dynamic
        )
        nnx.update(model, new_params, new_rest)
        nnx.update(self.opt_state, nnx.state(new_state, graph=self.graph))
        nnx.update(self.reuse_key, nnx.state(new_key, graph=self.graph))
        self.step[...] += ok.astype(self.step.dtype)
        return (loss, aux) if has_aux else loss


class ModelAndOptimizer(Optimizer[M]):
    """An :class:`Optimizer` that holds its model: ``update(grads, ...)``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from flax import nnx
        >>> import nnxopt
        >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> loss_fn = lambda m: jnp.mean((m(jnp.ones((4, 2))) - 1.0) ** 2)
        >>> opt = nnxopt.ModelAndOptimizer(model, optax.lbfgs())
        >>> @nnx.jit
        ... def train_step(opt):
        ...     loss, grads = nnx.value_and_grad(loss_fn)(opt.model)
        ...     opt.update(grads, value=loss, value_fn=loss_fn)
        ...     return loss
        >>> losses = [float(train_step(opt)) for _ in range(4)]
        >>> bool(losses[-1] < 1e-6 * losses[0])
        True
    """

    def __init__(
        self,
        model: M,
        tx: optax.GradientTransformation,
        *,
        wrt: Any = nnx.Param,
        graph: bool | None = None,
    ):
        super().__init__(model, tx, wrt=wrt, graph=graph)
        self.model = model

    def update(self, grads: Any, /, **kwargs: Any) -> optax.Updates:  # type: ignore[override]
        """Update the held model from ``grads``; see :meth:`Optimizer.update`."""
        return super().update(self.model, grads, **kwargs)

    def minimize_step(  # type: ignore[override]
        self,
        loss_fn: Callable[..., Any],
        *args: Any,
        has_aux: bool = False,
        **kwargs: Any,
    ) -> Any:
        """One iteration on the held model; see :meth:`Optimizer.minimize_step`."""
        return super().minimize_step(
            self.model, loss_fn, *args, has_aux=has_aux, **kwargs
        )


# ---------------------------------------------------------------------------
# The compiled step: pure functions of pytrees.


def _jitted_entry(
    opt: Optimizer, model: Any, loss_fn: Any, has_aux: bool, static: Any, dynamic: list
) -> Any:
    model = opt.model if model is None else model  # type: ignore[attr-defined]
    return opt._minimize_step_traced(model, loss_fn, has_aux, static, dynamic)


def _step(
    tx: optax.GradientTransformation,
    objective: Objective,
    static: Any,
    params: PyTree,
    rest: PyTree,
    opt_state: PyTree,
    reuse_key: ReuseKey,
    dynamic: list,
) -> tuple:
    args, kwargs = _combine(dynamic, static)
    # The loop's protocol (nnxopt._protocol): reuse the stored value and grad,
    # but only at the iterate and for the arguments they were computed at.
    caps = Capabilities.of(opt_state, params)
    stateless = not objective.writes_state(params, rest, args, kwargs)
    checked = reuse_key.params is not None
    if checked:
        fp_dtype = reuse_key.fingerprint.dtype
        fp = fingerprint(hash((objective, static)), (dynamic, rest), fp_dtype)
    if checked and caps.reuse and stateless and not objective.has_aux:
        stored = caps.stored(opt_state, params)

        def fresh() -> tuple:  # in the stored dtypes, e.g. float64 data, f32 model
            v, g = jax.value_and_grad(objective.value_fn(rest, args, kwargs))(params)
            g = jax.tree.map(lambda a, b: a.astype(b.dtype), g, stored[1])
            return v.astype(stored[0].dtype), g

        valid = (
            jnp.isfinite(stored[0])
            & _tree_equal(params, reuse_key.params)
            & jnp.all(fp == reuse_key.fingerprint)
        )
        value, grad = jax.lax.cond(valid, lambda: stored, fresh)
        aux, new_rest = None, rest
    else:
        (value, (aux, new_rest)), grad = objective.value_and_grad(
            params, rest, args, kwargs
        )
    fn = objective.value_fn(rest, args, kwargs)
    updates, new_state = tx.update(
        grad, opt_state, params, **extra_args(tx, value, grad, fn)
    )
    new_state = cast_like(new_state, opt_state)
    new_params = optax.apply_updates(params, updates)
    ok = _all_finite(new_params)
    new_key = reuse_key
    if checked:
        # The value and gradient a search stores were computed on the
        # arguments of this call, at the new point (the rest the trials saw).
        reusable = caps.reuse and stateless and not objective.has_aux
        unset = jnp.full_like(fp, jnp.nan)
        new_key = ReuseKey(new_params, fp if reusable else unset)
    return (
        _select(ok, new_params, params),
        _select(ok, new_rest, rest),
        _select(ok, new_state, opt_state),
        _select(ok, new_key, reuse_key),
        value,
        aux,
        ok,
    )


# ---------------------------------------------------------------------------
# Helpers.


def _unused(model: Any) -> Any:  # placeholder loss for update()'s Objective
    raise AssertionError("not called")


def _pure_grads(grads: Any, params: PyTree, wrt: Any, graph: Any, call: str) -> PyTree:
    has_variables = any(
        isinstance(x, nnx.Variable)
        for x in jax.tree.leaves(grads, is_leaf=lambda x: isinstance(x, nnx.Variable))
    )
    if isinstance(grads, nnx.Module):
        raise TypeError(
            f"{call}: grads must be gradients (the State returned by nnx.grad), "
            f"not a module ({type(grads).__name__}). Compute them with "
            "`nnx.grad(loss_fn)(model)`."
        )
    if has_variables:
        grads = nnx.as_pure(nnx.state(grads, wrt, graph=graph))
    want, got = jax.tree.structure(params), jax.tree.structure(grads)
    shapes_ok = want == got and all(
        jnp.shape(g) == jnp.shape(p)
        for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params))
    )
    if not shapes_ok:
        raise TypeError(
            f"{call}: grads do not match the parameters selected by wrt={wrt!r}. "
            f"Expected {_tree_summary(params)}; received {_tree_summary(grads)}. "
            "Differentiate with respect to the same filter, e.g. "
            "`nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)`."
        )
    mismatched = [
        (jax.tree_util.keystr(path), jnp.result_type(g), jnp.result_type(p))
        for (path, g), p in zip(
            jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(params)
        )
        if jnp.result_type(g) != jnp.result_type(p)
    ]
    if mismatched:
        where, got, want = mismatched[0]
        raise TypeError(
            f"{call}: grads must have the dtypes of the parameters; grads{where} "
            f"is {got} for a {want} parameter ({len(mismatched)} such leaves). "
            "The optimizer state would change dtype (or, for line searches and "
            f"L-BFGS, fail to trace). Cast them: `jax.tree.map(lambda g: "
            f"g.astype(jnp.{want}), grads)`, or compute the loss in the "
            "parameters' dtype."
        )
    return grads


def _tree_summary(tree: Any, limit: int = 6) -> str:
    items = [
        "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        + f": {jnp.shape(leaf)}"
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    more = f", ... ({len(items)} leaves)" if len(items) > limit else ""
    return "{" + ", ".join(items[:limit]) + more + "}"


def _check_extra_args(
    call: str,
    tx: optax.GradientTransformation,
    opt_state: PyTree,
    params: PyTree,
    kwargs: dict[str, Any],
) -> None:
    """Raise our own error, before optax's, when a line-search transform (one
    whose state declares ``learning_rate`` or a stored ``value`` and ``grad``,
    see ``nnxopt._protocol``) is called without ``value``, ``grad`` and
    ``value_fn``."""
    if not isinstance(tx, optax.GradientTransformationExtraArgs):
        return
    caps = Capabilities.of(opt_state, params)
    if not (caps.search or caps.reuse):
        return
    missing = [n for n in ("value", "grad", "value_fn") if n not in kwargs]
    if missing:
        names = ", ".join(repr(n) for n in missing)
        raise TypeError(
            f"{call}: the optax transform needs the extra argument(s) {names}, "
            "which were not given. Line searches and L-BFGS need value=, grad= "
            "and value_fn= (a function of the wrt-filtered state, as for "
            "nnx.Optimizer, or of the model). Call "
            "`optimizer.minimize_step(model, loss_fn)`, which supplies them all, "
            "or pass them to update()."
        )
