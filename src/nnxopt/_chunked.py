"""``nnxopt.chunked``: a full-batch loss evaluated chunk by chunk.

Full-batch L-BFGS needs the loss and gradient over the *whole* data set at each
evaluation; the activations of a million examples need not fit in memory at
once. ``chunked`` evaluates the loss over consecutive chunks of the examples
inside the compiled loop (``lax.scan``), accumulating the value and the
gradient, so that peak memory grows with the chunk, not the data set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.custom_derivatives import SymbolicZero

from ._tree import combine, describe, partition

PyTree = Any
_CALL = "nnxopt.chunked"
_REDUCTIONS = ("mean", "sum")


def chunked(
    loss_fn: Callable[..., Any],
    chunk_size: int,
    *,
    reduction: str = "mean",
    batch_argnums: int | Sequence[int] | None = None,
) -> Callable[..., jax.Array]:
    r"""Return ``loss_fn`` over the whole data set, evaluated in chunks.

    ``loss_fn(params, *args, **kwargs)`` must be a **mean** (``reduction=
    "mean"``) or a **sum** (``reduction="sum"``) over the examples of its batched
    arguments (every positional argument after ``params`` by default; their
    leaves share a leading example axis of size ``N``). The returned function
    has the same signature and value, computed as

    .. math::

        L(\theta) = \sum_c w_c\, \ell(\theta; X_c), \qquad
        w_c = n_c / N \text{ (mean) or } 1 \text{ (sum)},

    over chunks ``X_c`` of ``chunk_size`` examples (``lax.scan``; when
    ``chunk_size`` does not divide ``N``, the last ``N mod chunk_size``
    examples form one smaller chunk evaluated after the scan: exact, no
    padding, one more trace of ``loss_fn``). Its derivative is a
    ``jax.custom_jvp``: a differentiated call accumulates each chunk's value
    *and* gradient in the same scan and keeps only the summed gradient
    (``n`` numbers); the tangent is its inner product with the parameters'
    tangent. Peak memory is that of one chunk plus the parameters, not that
    of ``N`` examples (plain reverse mode through a scan would store every
    chunk's activations), in reverse mode (``jax.grad``) and forward mode
    (``jax.jvp``, ``jax.jacfwd``) alike, and derivatives of any order
    compose (``jax.hessian``; the implicit derivative of a solve, see
    :class:`nnxopt.ImplicitDiff`). A value-only call (what a line search's
    trial evaluations make through ``value_fn``) runs the cheaper forward
    scan alone. Derivatives with respect to the other arguments work too:
    an argument passed whole (a hyperparameter) gets its gradient summed over
    the chunks, a batched one its chunks' gradients (as large as the data).

    Why a wrapper of the loss rather than a ``chunks=`` option of ``solve``:
    only the loss knows which arguments are examples and whether it is a mean
    or a sum; as a function it composes with everything that takes a loss
    (``solve``, ``minimize``, ``Optimizer.minimize_step``, ``jax.grad``, a
    regulariser added outside it) and the solvers stay unaware of it.

    The result equals the unchunked loss up to the order of summation (a few
    ulps per chunk). Regularisation terms that are not sums over examples
    belong outside: ``lambda p, X, y: chunked_loss(p, X, y) + lam * l2(p)``.
    ``params`` may be a pytree or an NNX module (as ``minimize`` passes it);
    a module's state must not be written by ``loss_fn`` (writes, e.g.
    BatchNorm statistics in training mode, are discarded). ``loss_fn`` returns
    the loss alone: auxiliary outputs (``(loss, aux)``, ``has_aux=True``) are
    refused, since one chunk's aux says nothing of the whole data set and
    cannot in general be summed or averaged like the loss; compute aux on the
    full data after the solve (``aux_fn(sol.params, X, y)``).

    Args:
        loss_fn: ``loss_fn(params, *args, **kwargs)`` returning a real scalar:
            the mean or sum over the examples it is given.
        chunk_size: examples per chunk, a positive int.
        reduction: ``"mean"`` (default) or ``"sum"``: how ``loss_fn`` reduces
            over examples.
        batch_argnums: indices into ``args`` (0 is the first argument after
            ``params``) of the batched arguments; ``None`` (default): all of
            them. Other arguments and all keyword arguments are passed whole to
            every chunk.

    Returns:
        ``f(params, *args, **kwargs)``, the full-batch loss.

    Raises:
        TypeError: ``loss_fn`` not callable, ``chunk_size`` not an int, or (when
            called) a batched argument without array leaves, or ``loss_fn``
            returning a tuple (``(loss, aux)``) or a non-scalar.
        ValueError: ``chunk_size < 1``, an unknown ``reduction``, out-of-range
            ``batch_argnums``, or (when called) batched leaves with different
            leading sizes or an empty batch.

    Example:
        >>> import jax, jax.numpy as jnp, nnxopt
        >>> def mse(w, X, y):
        ...     return jnp.mean((X @ w - y) ** 2)
        >>> X = jnp.arange(20.0).reshape(10, 2) / 10
        >>> y = X @ jnp.array([1.0, -2.0])
        >>> loss = nnxopt.chunked(mse, chunk_size=4)   # chunks 4, 4 and 2
        >>> w = jnp.array([0.5, 0.5])
        >>> bool(jnp.allclose(loss(w, X, y), mse(w, X, y)))
        True
        >>> bool(jnp.allclose(jax.grad(loss)(w, X, y), jax.grad(mse)(w, X, y)))
        True
        >>> t = jnp.array([1.0, 0.0])   # forward mode: the same derivative
        >>> d, d0 = (jax.jvp(lambda w: f(w, X, y), (w,), (t,))[1] for f in (loss, mse))
        >>> bool(jnp.allclose(d, d0))
        True
        >>> sol = nnxopt.solve(loss, jnp.zeros(2), X, y)
        >>> print(jnp.round(sol.params, 4))
        [ 1. -2.]
    """
    if not callable(loss_fn):
        raise TypeError(f"{_CALL}: loss_fn must be callable; got {loss_fn!r}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"{_CALL}: chunk_size must be an int; got {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(f"{_CALL}: chunk_size must be >= 1; got {chunk_size!r}.")
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{_CALL}: reduction must be 'mean' or 'sum' (how loss_fn reduces "
            f"over the examples); got {reduction!r}."
        )
    argnums = _argnums(batch_argnums)

    @functools.wraps(loss_fn)
    def full_batch(params: Any, *args: Any, **kwargs: Any) -> jax.Array:
        batched = _batched_positions(argnums, len(args))
        n = _num_examples(args, batched)
        graphdef, tree = (
            nnx.split(params) if isinstance(params, nnx.Module) else (None, params)
        )
        data = [args[i] for i in batched]
        rest = [None if i in batched else a for i, a in enumerate(args)]
        dynamic, static = partition((rest, kwargs))

        def chunk_loss(tree: PyTree, chunk: list, dynamic: list) -> jax.Array:
            rest, kwargs = combine(dynamic, static)
            full = list(rest)
            for i, x in zip(batched, chunk, strict=True):
                full[i] = x
            p = tree if graphdef is None else nnx.merge(graphdef, tree)
            return _scalar(loss_fn(p, *full, **kwargs))

        run = _Chunks(chunk_loss, n, chunk_size, reduction)
        return _with_jvp(run)(tree, data, dynamic)

    return full_batch


def _scalar(out: Any) -> jax.Array:
    """``loss_fn``'s output, refused (trace time) if it is ``(loss, aux)``."""
    if isinstance(out, tuple | list):
        raise TypeError(
            f"{_CALL}: loss_fn returned a {type(out).__name__} {describe(out)} "
            "(shapes of one chunk); it "
            "must return the loss alone. Auxiliary outputs (has_aux) are not "
            "supported: an aux of one chunk says nothing of the whole data set "
            "and cannot in general be summed or averaged like the loss. Return "
            "the loss only (e.g. `lambda p, *a: loss_fn(p, *a)[0]`) and compute "
            "aux on the full data outside the solve, e.g. "
            "`aux_fn(sol.params, X, y)`."
        )
    return jnp.asarray(out)


def _argnums(batch_argnums: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if batch_argnums is None:
        return None
    nums = (batch_argnums,) if isinstance(batch_argnums, int) else batch_argnums
    nums = tuple(nums)
    if not nums or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in nums
    ):
        raise ValueError(
            f"{_CALL}: batch_argnums must be a non-negative int or a non-empty "
            f"sequence of them (0 is the first argument after params); got "
            f"{batch_argnums!r}."
        )
    return tuple(sorted(set(nums)))


def _batched_positions(argnums: tuple[int, ...] | None, num_args: int) -> list[int]:
    if argnums is None:
        if num_args == 0:
            raise ValueError(
                f"{_CALL}: the loss was called with no data arguments after "
                "params; pass the examples positionally: loss(params, X, y)."
            )
        return list(range(num_args))
    if argnums[-1] >= num_args:
        raise ValueError(
            f"{_CALL}: batch_argnums={argnums!r} but the loss was called with "
            f"{num_args} argument(s) after params."
        )
    return list(argnums)


def _num_examples(args: tuple, batched: list[int]) -> int:
    sizes: dict[str, int] = {}
    for i in batched:
        for path, leaf in jax.tree_util.tree_flatten_with_path(args[i])[0]:
            shape = jnp.shape(leaf)
            name = f"args[{i}]{jax.tree_util.keystr(path)}"
            if not shape:
                raise ValueError(
                    f"{_CALL}: batched argument {name} is a scalar; every leaf "
                    "of a batched argument needs a leading example axis (list "
                    "the batched arguments in batch_argnums)."
                )
            sizes[name] = shape[0]
    if not sizes:
        raise TypeError(f"{_CALL}: the batched arguments have no array leaves.")
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"{_CALL}: the batched arguments have different numbers of examples "
            f"(leading sizes) {sizes!r}; give them one leading size, or list "
            "the batched ones in batch_argnums."
        )
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError(f"{_CALL}: the batched arguments have no examples.")
    return n


class _Chunks:
    """The chunked value, and value-and-gradient, of one call."""

    def __init__(
        self, chunk_loss: Callable, n: int, chunk_size: int, reduction: str
    ) -> None:
        self.chunk_loss = chunk_loss
        self.n = n
        self.size = min(chunk_size, n)
        self.full, self.tail = divmod(n, self.size)
        self.reduction = reduction

    def weight(self, count: int) -> float:
        return count / self.n if self.reduction == "mean" else 1.0

    def split(self, data: list) -> tuple[list, list | None]:
        """The scanned chunks (leading axis: chunk index) and the remainder."""
        k, c = self.full, self.size

        def head(x: jax.Array) -> jax.Array:
            return jnp.reshape(x[: k * c], (k, c, *x.shape[1:]))

        chunks = jax.tree.map(head, data)
        tail = jax.tree.map(lambda x: x[k * c :], data) if self.tail else None
        return chunks, tail

    def value(self, tree: PyTree, data: list, dynamic: list) -> jax.Array:
        chunks, tail = self.split(data)
        w = self.weight(self.size)

        def body(total: jax.Array, chunk: list) -> tuple[jax.Array, None]:
            v = self.chunk_loss(tree, chunk, dynamic)
            return total + jnp.asarray(w, v.dtype) * v, None

        total = self._zero_value(tree, chunks, dynamic)
        total, _ = jax.lax.scan(body, total, chunks)
        if tail is not None:
            v = self.chunk_loss(tree, tail, dynamic)
            total = total + jnp.asarray(self.weight(self.tail), v.dtype) * v
        return total

    def value_and_grad(self, primals: tuple, wrt: tuple) -> tuple[jax.Array, tuple]:
        """The value and its gradient with respect to the leaves of ``primals
        = (tree, data, dynamic)`` flagged in ``wrt`` (a tuple of bool lists,
        one per leaf, the leaves' order), accumulated in one scan: a chunk's
        data leaves get their chunk's gradient (stacked), the others the sum
        over chunks. Returns the value and the gradients, flagged leaves only.
        """
        tree, data, dynamic = primals
        chunks, tail = self.split(data)

        def vg(chunk: list, w: float) -> tuple[jax.Array, list, list]:
            def f(diff: list, chunk_diff: list) -> jax.Array:
                t = _merge(tree, diff[0], wrt[0])
                dyn = _merge(dynamic, diff[1], wrt[2])
                return self.chunk_loss(t, _merge(chunk, chunk_diff, wrt[1]), dyn)

            diff = [_pick(tree, wrt[0]), _pick(dynamic, wrt[2])]
            v, (g, gc) = jax.value_and_grad(f, (0, 1))(diff, _pick(chunk, wrt[1]))
            scale = functools.partial(_scaled, w)
            return scale(v), jax.tree.map(scale, g), jax.tree.map(scale, gc)

        w = self.weight(self.size)

        def body(carry: tuple, chunk: list) -> tuple[tuple, list]:
            v, g, gc = vg(chunk, w)
            total, grad = carry
            return (total + v, jax.tree.map(jnp.add, grad, g)), gc

        zeros = jax.tree.map(
            jnp.zeros_like, [_pick(tree, wrt[0]), _pick(dynamic, wrt[2])]
        )
        carry = (self._zero_value(tree, chunks, dynamic), zeros)
        (total, grad), gc = jax.lax.scan(body, carry, chunks)
        # a data leaf's gradient: (k, c, ...) chunks back to (k c, ...) examples
        gc = [jnp.reshape(x, (-1, *x.shape[2:])) for x in gc]
        if tail is not None:
            v, g, gc_tail = vg(tail, self.weight(self.tail))
            total = total + v
            grad = jax.tree.map(jnp.add, grad, g)
            gc = [jnp.concatenate(xs) for xs in zip(gc, gc_tail, strict=True)]
        return total, (grad[0], gc, grad[1])

    def _zero_value(self, tree: PyTree, chunks: list, dynamic: list) -> jax.Array:
        one = jax.tree.map(lambda x: x[0], chunks)
        aval = jax.eval_shape(self.chunk_loss, tree, one, dynamic)
        if aval.shape != () or not jnp.issubdtype(aval.dtype, jnp.floating):
            raise TypeError(
                f"{_CALL}: loss_fn must return a real floating scalar; it "
                f"returned {aval.dtype}{list(aval.shape)}."
            )
        return jnp.zeros((), aval.dtype)


def _differentiable(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _scaled(w: float, x: jax.Array) -> jax.Array:
    return jnp.asarray(w, x.dtype) * x


def _pick(tree: PyTree, mask: list[bool]) -> list:
    return [x for x, m in zip(jax.tree.leaves(tree), mask, strict=True) if m]


def _merge(tree: PyTree, diff: list, mask: list[bool]) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    it = iter(diff)
    return jax.tree.unflatten(
        treedef, [next(it) if m else x for x, m in zip(leaves, mask, strict=True)]
    )


def _with_jvp(run: _Chunks) -> Callable[..., jax.Array]:
    """``run.value`` with a ``custom_jvp`` whose tangent is ``<grad, tangent>``.

    The rule computes the value and the gradient with respect to the inputs
    that have a tangent in one scan (:meth:`_Chunks.value_and_grad`, a
    reverse pass per chunk) and returns ``sum_i <g_i, t_i>``: linear in the
    tangents with the gradients as its only residuals. Forward mode
    (``jax.jvp``, ``jax.jacfwd``) evaluates it directly; reverse mode
    (``jax.grad``) transposes it into ``ct * g``. Either way peak memory is
    that of one chunk, and derivatives of any order compose (the rule is
    plain JAX). A value-only call runs ``run.value`` alone.
    """

    @jax.custom_jvp
    def value(tree: PyTree, data: list, dynamic: list) -> jax.Array:
        return run.value(tree, data, dynamic)

    def rule(primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
        t_leaves = [jax.tree.leaves(t, is_leaf=_is_zero) for t in tangents]
        wrt = tuple(
            [
                _differentiable(x) and not _is_zero(t)
                for x, t in zip(jax.tree.leaves(p), ts, strict=True)
            ]
            for p, ts in zip(primals, t_leaves, strict=True)
        )
        total, grads = run.value_and_grad(primals, wrt)
        tangent = jnp.zeros((), total.dtype)
        for g, ts, m in zip(grads, t_leaves, wrt, strict=True):
            for gi, ti in zip(g, _pick(ts, m), strict=True):
                tangent = tangent + jnp.sum(gi * ti).astype(total.dtype)
        return total, tangent

    value.defjvp(rule, symbolic_zeros=True)
    return value


def _is_zero(t: Any) -> bool:
    return isinstance(t, SymbolicZero)
