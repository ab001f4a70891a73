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

from ._tree import combine, partition

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
    padding, one more trace of ``loss_fn``). Its gradient is a
    ``jax.custom_vjp``: the forward pass of a differentiated call accumulates
    each chunk's value *and* gradient in the same scan and keeps only the
    summed gradient (``n`` numbers), so peak memory is that of one chunk plus
    the parameters, not that of ``N`` examples (plain reverse mode through a
    scan would store every chunk's activations). A value-only call (what a
    line search's trial evaluations make through ``value_fn``) runs the
    cheaper forward scan alone.

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
    BatchNorm statistics in training mode, are discarded).

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
            called) a batched argument without array leaves.
        ValueError: ``chunk_size < 1``, an unknown ``reduction``, out-of-range
            ``batch_argnums``, or (when called) batched leaves with different
            leading sizes, an empty batch, or a differentiation with respect
            to the data.

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
            return jnp.asarray(loss_fn(p, *full, **kwargs))

        run = _Chunks(chunk_loss, n, chunk_size, reduction)
        return _with_vjp(run)(tree, data, dynamic)

    return full_batch


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

    def value_and_grad(
        self, tree: PyTree, data: list, dynamic: list
    ) -> tuple[jax.Array, PyTree]:
        chunks, tail = self.split(data)
        mask = [_differentiable(x) for x in jax.tree.leaves(tree)]

        def vg(chunk: list, w: float) -> tuple[jax.Array, list]:
            def f(diff: list) -> jax.Array:
                return self.chunk_loss(_merge(tree, diff, mask), chunk, dynamic)

            v, g = jax.value_and_grad(f)(_diff_leaves(tree, mask))
            return jnp.asarray(w, v.dtype) * v, [jnp.asarray(w, x.dtype) * x for x in g]

        w = self.weight(self.size)

        def body(carry: tuple, chunk: list) -> tuple[tuple, None]:
            v, g = vg(chunk, w)
            total, grad = carry
            return (total + v, [a + b for a, b in zip(grad, g, strict=True)]), None

        zeros = [jnp.zeros_like(x) for x in _diff_leaves(tree, mask)]
        carry = (self._zero_value(tree, chunks, dynamic), zeros)
        (total, grad), _ = jax.lax.scan(body, carry, chunks)
        if tail is not None:
            v, g = vg(tail, self.weight(self.tail))
            total = total + v
            grad = [a + b for a, b in zip(grad, g, strict=True)]
        return total, grad

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


def _diff_leaves(tree: PyTree, mask: list[bool]) -> list:
    return [x for x, m in zip(jax.tree.leaves(tree), mask, strict=True) if m]


def _merge(tree: PyTree, diff: list, mask: list[bool]) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    it = iter(diff)
    return jax.tree.unflatten(
        treedef, [next(it) if m else x for x, m in zip(leaves, mask, strict=True)]
    )


def _with_vjp(run: _Chunks) -> Callable[..., jax.Array]:
    """``run.value`` with a gradient from ``run.value_and_grad`` (params only)."""

    @jax.custom_vjp
    def value(tree: PyTree, data: list, dynamic: list) -> jax.Array:
        return run.value(tree, data, dynamic)

    def fwd(tree: Any, data: Any, dynamic: Any) -> tuple[jax.Array, tuple]:
        perturbed = [
            x.perturbed
            for x in jax.tree.leaves((data, dynamic))
            if _differentiable(x.value)
        ]
        if any(perturbed):
            raise ValueError(
                f"{_CALL}: differentiating with respect to the data arguments is "
                "not supported (the chunked gradient is taken with respect to "
                "params only); differentiate the unchunked loss for that."
            )
        tree, data, dynamic = jax.tree.map(lambda x: x.value, (tree, data, dynamic))
        total, grad = run.value_and_grad(tree, data, dynamic)
        return total, (grad, tree)

    def bwd(res: tuple, ct: jax.Array) -> tuple:
        grad, tree = res
        it = iter(grad)
        leaves, treedef = jax.tree.flatten(tree)
        cts = [
            jnp.asarray(ct, x.dtype) * next(it) if _differentiable(x) else None
            for x in leaves
        ]
        return jax.tree.unflatten(treedef, cts), None, None

    value.defvjp(fwd, bwd, symbolic_zeros=True)
    return value
