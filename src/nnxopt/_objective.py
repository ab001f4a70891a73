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

import contextlib
import dataclasses
import functools
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Objective:
    """A model-level loss as pure functions of ``(params, rest)``.

    Attributes:
        graphdef: the static structure of the model.
        wrt: the NNX filter of the trainable Variables.
        loss_fn: ``loss_fn(model, *args, **kwargs)``: a scalar, or ``(scalar, aux)``
            when ``has_aux``; or, wrapped by :func:`state_fn`,
            ``loss_fn(state, *args, **kwargs)`` of the ``wrt`` state.
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
        if isinstance(self.loss_fn, StatedForm) and self.loss_fn.form == "state":
            # flax's form: a function of the wrt state; it cannot write `rest`
            with explain_tracer_errors(self.call, "loss_fn"):
                out = self.loss_fn.fn(params, *args, **(kwargs or {}))
            loss, aux = self._unpack(out)
            return loss, (aux, rest)
        model = self.merge(params, rest)
        with explain_tracer_errors(self.call, "loss_fn"):
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


#: JAX's errors for a traced value turned into a Python or NumPy value.
_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


@contextlib.contextmanager
def explain_tracer_errors(call: str, name: str) -> Iterator[None]:
    """Turn JAX's error for a traced value made concrete (``float(x)``,
    ``if x:``) inside the user's loss into one that says what to do."""
    try:
        yield
    except _TRACER_ERRORS as err:
        raise TypeError(
            f"{call}: {name} turned a traced array into a Python value "
            f"({type(err).__name__}: float(), .item(), int(), bool(), `if x:` "
            "or np.asarray on an array). nnxopt compiles the loss with jax, so "
            "inside it values are traced: compute with jnp, use jnp.where for "
            "branches and return the array; call float() on the result "
            "outside the loss."
        ) from err


def _is_number(x: Any) -> bool:
    """A Python or NumPy number or array (not a container of them)."""
    return isinstance(x, int | float | complex | np.ndarray | np.generic)


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
    if not (isinstance(loss, jax.Array) or _is_number(loss)):
        raise TypeError(
            f"{call}: {name} must return a real floating-point scalar"
            f"{' as the first item of (loss, aux)' if has_aux else ''}; it "
            f"returned {_describe(loss)}. Return the "
            "loss itself (e.g. `out['loss']`); to also return other values, "
            "return `(loss, aux)` and pass has_aux=True."
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


# ---------------------------------------------------------------------------
# The two forms of update()'s value_fn / obj_fn.
#
# nnx.Optimizer hands optax's extra arguments through untouched, so flax code
# writes `value_fn(state)`, a function of the wrt-filtered nnx.State that optax
# passes. nnxopt documents `value_fn(model)`. Both are accepted; the rule that
# tells them apart is `resolve_form` below.

_FORM_WORDS = {
    "model": "a function of the model (nnxopt's form)",
    "state": "a function of the wrt-filtered nnx.State (nnx.Optimizer's form)",
}


@dataclasses.dataclass(frozen=True)
class StatedForm:
    """A loss function whose argument form the user stated (see `state_fn`)."""

    fn: Callable[..., Any]
    form: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def __wrapped__(self) -> Callable[..., Any]:  # inspect.signature sees fn's
        return self.fn

    def __repr__(self) -> str:
        return f"nnxopt.{self.form}_fn({self.fn!r})"


def state_fn(fn: Callable[..., Any]) -> StatedForm:
    """Mark ``fn`` as a function of the ``wrt``-filtered state (flax's form).

    ``Optimizer.update`` tells the two forms of ``value_fn`` and ``obj_fn`` apart
    by itself (see :meth:`nnxopt.Optimizer.update`); wrapping states the form and
    skips that rule. ``fn(state, **kwargs)`` receives the trial parameters as the
    ``nnx.State`` of raw arrays that ``nnx.Optimizer`` passes to optax, so
    ``nnx.merge(graphdef, state, ...)`` rebuilds the model. The wrapper is itself
    callable and calls ``fn``, so it can be used wherever ``fn`` was.

    Args:
        fn: ``fn(state, **kwargs) -> loss``.

    Returns:
        ``fn`` marked as state-level, for ``value_fn=`` or ``obj_fn=``.

    Raises:
        TypeError: if ``fn`` is not callable.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from flax import nnx
        >>> import nnxopt
        >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> graphdef = nnx.graphdef(model)
        >>> x, y = jnp.ones((4, 2)), jnp.ones((4, 1))
        >>> def loss_fn(model):
        ...     return jnp.mean((model(x) - y) ** 2)
        >>> def value_fn(state):  # flax's form: a function of the state
        ...     return loss_fn(nnx.merge(graphdef, state))
        >>> opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
        >>> loss, grads = nnx.value_and_grad(loss_fn)(model)
        >>> _ = opt.update(model, grads, value=loss,
        ...                value_fn=nnxopt.state_fn(value_fn))
        >>> bool(loss_fn(model) < loss)
        True
    """
    return _stated(fn, "state")


def model_fn(fn: Callable[..., Any]) -> StatedForm:
    """Mark ``fn`` as a function of the model (nnxopt's form).

    The counterpart of :func:`state_fn`: ``fn(model, **kwargs)`` receives a copy
    of the model holding the trial parameters and a snapshot of its other state.

    Args:
        fn: ``fn(model, **kwargs) -> loss``.

    Returns:
        ``fn`` marked as model-level, for ``value_fn=`` or ``obj_fn=``.

    Raises:
        TypeError: if ``fn`` is not callable.

    Example:
        A function whose argument would pass for either form, stated; the wrapper
        still calls it like the function itself:

        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> import nnxopt
        >>> def norm2(tree):
        ...     return sum(jnp.sum(v**2) for v in jax.tree.leaves(tree))
        >>> value_fn = nnxopt.model_fn(norm2)  # update(..., value_fn=value_fn)
        >>> value_fn
        nnxopt.model_fn(<function norm2 at ...>)
        >>> model = nnx.Linear(1, 2, kernel_init=nnx.initializers.ones,
        ...                    rngs=nnx.Rngs(0))
        >>> float(value_fn(model))  # kernel ones, bias zeros
        2.0
    """
    return _stated(fn, "model")


def _stated(fn: Callable[..., Any], form: str) -> StatedForm:
    if isinstance(fn, StatedForm):
        fn = fn.fn  # the outer statement wins
    if not callable(fn):
        raise TypeError(
            f"nnxopt.{form}_fn: fn must be callable, `fn({form}) -> loss`; got {fn!r}."
        )
    return StatedForm(fn, form)


# Decisions of the automatic rule, per function and argument structure, so an
# un-jitted training loop decides once rather than at every update() call.
_DECIDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def params_fn(
    fn: Any,
    merge: Callable[[PyTree], Any],
    key: Hashable,
    name: str,
    call: str,
) -> Callable[..., Any]:
    """Turn ``update()``'s ``value_fn``/``obj_fn`` into the function optax calls.

    The result takes the trial parameters (the pure ``wrt`` state) and keyword
    arguments optax forwards, and calls ``fn`` in its form. The form is the one
    stated with :func:`state_fn`/:func:`model_fn`, else decided by
    :func:`resolve_form` the first time optax calls it (at trace time). An error
    raised by ``fn`` itself reaches the user unchanged, with a note naming the
    form used and how to state it.

    Args:
        fn: the user's function, possibly wrapped by ``state_fn``/``model_fn``.
        merge: builds the model from the parameters (and the other state).
        key: hashable description of the argument structure, for the cache.
        name: ``"value_fn"`` or ``"obj_fn"``, for messages.
        call: the public call, for messages.

    Raises:
        TypeError: if ``fn`` is not callable.
    """
    if isinstance(fn, StatedForm):
        user, stated = fn.fn, (fn.form, f"it is wrapped in nnxopt.{fn.form}_fn")
    elif callable(fn):
        user, stated = fn, None
    else:
        raise TypeError(
            f"{call}: {name} must be callable: `{name}(state) -> loss`, a function "
            "of the wrt-filtered nnx.State (as for nnx.Optimizer), or "
            f"`{name}(model) -> loss`; got {fn!r}."
        )
    callers = {
        "state": lambda p, *a, **k: user(p, *a, **k),
        "model": lambda p, *a, **k: user(merge(p), *a, **k),
    }
    decision: list[tuple[str, str] | None] = [stated]

    @functools.wraps(user)  # optax routes keyword arguments by fn's signature
    def level(params: PyTree, *args: Any, **kwargs: Any) -> Any:
        decided = decision[0]
        if decided is None:
            cache_key = (key, tree_avals((args, kwargs)))
            with explain_tracer_errors(call, name):
                decided = decision[0] = resolve_form(
                    user, callers, (params, args, kwargs), cache_key, name, call
                )
        form, why = decided
        try:
            with explain_tracer_errors(call, name):
                return callers[form](params, *args, **kwargs)
        except Exception as err:
            err.add_note(
                f"nnxopt: {call} called {name} as {_FORM_WORDS[form]}, because "
                f"{why}. To state the form yourself, pass "
                f"{name}=nnxopt.model_fn(f) or {name}=nnxopt.state_fn(f)."
            )
            raise

    return level


#: What calling a function with the wrong form (a State for a model, or a model
#: for a State) raises: an object without the expected attribute, call,
#: index or shape; flax's own errors (e.g. ``nnx.merge`` given a module). Any
#: other exception is the function's own and propagates from the first trial.
_WRONG_FORM = (
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    ValueError,
    flax.errors.FlaxError,
)


def resolve_form(
    fn: Callable[..., Any],
    callers: dict[str, Callable[..., Any]],
    inputs: tuple[PyTree, tuple, dict],
    key: Hashable,
    name: str,
    call: str,
) -> tuple[str, str]:
    """Decide whether ``fn`` takes the state or the model: the automatic rule.

    1. Call ``fn`` with the ``wrt``-filtered ``nnx.State`` (what ``nnx.Optimizer``
       passes). If that traces, ``fn`` is state-level: code that works with
       ``nnx.Optimizer`` is called exactly as ``nnx.Optimizer`` calls it.
    2. Otherwise call it with the model. If that traces, ``fn`` is model-level.
    3. If neither traces, raise the error of step 1 (what ``nnx.Optimizer``
       would raise), chained to the error of step 2, with a note on both.

    "Traces" means ``jax.eval_shape`` succeeds on abstract values of the
    parameters' shapes and dtypes: nothing is computed and no host callback runs.
    Tracing depends only on those shapes and dtypes, which are exactly what the
    real call receives, so the trial predicts the real call. Python side effects
    in ``fn`` happen once more per trial, as with any ``jax.jit``. The decision is
    cached per function and argument structure.

    Returns:
        ``(form, why)``: ``"state"`` or ``"model"``, and the reason in words.
    """
    params, args, kwargs = inputs
    try:
        cache = _DECIDED.setdefault(fn, {})
    except TypeError:  # not weakly referenceable (a builtin): no caching
        cache = {}
    try:
        return cache[key]
    except (KeyError, TypeError):
        pass
    errors: dict[str, Exception] = {}
    for form in ("state", "model"):
        try:
            jax.eval_shape(lambda p, f=form: callers[f](p, *args, **kwargs), params)
        except _WRONG_FORM as err:
            errors[form] = err
            continue
        if form == "state":
            why = (
                "calling it with the wrt-filtered nnx.State, as nnx.Optimizer does, "
                "traces without error (the state is tried first)"
            )
        else:
            why = (
                "calling it with the wrt-filtered nnx.State raised "
                f"{_one_line(errors['state'])}, and calling it with the model traces"
            )
        try:
            cache[key] = (form, why)
        except TypeError:  # unhashable key: no caching
            pass
        return form, why
    state_error, model_error = errors["state"], errors["model"]
    if isinstance(model_error, _TRACER_ERRORS) and not isinstance(
        state_error, _TRACER_ERRORS
    ):
        # The model form got as far as making a traced value concrete: that is
        # the user's error to fix (explain_tracer_errors explains it).
        raise model_error from state_error
    state_error.add_note(
        f"nnxopt: {call} could not call {name} in either form. Called with the "
        "wrt-filtered nnx.State (nnx.Optimizer's form, tried first) it raised the "
        "error above; called with the model (nnxopt's form) it raised "
        f"{_one_line(model_error)} (its traceback is shown first). If {name} "
        f"takes the model, pass {name}=nnxopt.model_fn(f) to see only its error; "
        f"if it takes the state, {name}=nnxopt.state_fn(f)."
    )
    raise state_error from model_error


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160] if text else ''}"


def tree_avals(tree: Any) -> Hashable:
    """A hashable summary of a pytree: its structure, leaf shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(
        (jnp.shape(x), str(jnp.result_type(x))) if hasattr(x, "dtype") else x
        for x in leaves
    )
