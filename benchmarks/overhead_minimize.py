"""Overhead of ``nnxopt.minimize`` against a hand-written optax ``lax.while_loop``.

For each problem and transform (``optax.lbfgs()`` and ``nnxopt.lbfgs()``) the
same solve (same start, same iteration count) runs three ways, interleaved in one
process so that load on the machine affects all alike:

- ``hand``: a jitted ``lax.while_loop`` over ``tx.update`` on raw pytrees with
  ``optax.value_and_grad_from_state`` (the floor: no NNX, no bookkeeping);
- ``solve``: nnxopt's compiled loop alone (the cached jitted ``_solve``, called
  on pre-split pytrees): the cost of the loop body;
- ``minimize``: the public call, Python side included (split, dispatch, write
  back, reading the result).

Reports the median time per solve (compile excluded) and the first-call time
(trace + compile + one solve, each call with a fresh loss function so nothing is
cached), as ratios to ``hand``.

    python -m benchmarks.overhead_minimize [--repeats 31] [--compiles 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nnxopt
from nnxopt import _cache
from nnxopt._objective import split_model


class Point(nnx.Module):
    def __init__(self) -> None:
        self.x = nnx.Param(jnp.array([-1.2, 1.0]))


class MLP(nnx.Module):
    def __init__(self, width: int) -> None:
        rngs = nnx.Rngs(0)
        self.l1 = nnx.Linear(1, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.l3 = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l3(jnp.tanh(self.l2(jnp.tanh(self.l1(x)))))


def rosenbrock_loss():
    def loss(m):
        x = m.x[...]
        return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2

    return loss


def mlp_loss():
    def loss(m, x, y):
        return jnp.mean((m(x) - y) ** 2)

    return loss


def problems():
    x = jnp.linspace(-3.0, 3.0, 256)[:, None]
    y = jnp.sin(2.0 * x) + 0.1 * x**2
    # (name, model factory, loss factory, args, gtol, maxiter): MLP solves run a
    # fixed number of iterations (gtol=0, ftol=0) so both loops do the same work.
    yield "Rosenbrock (2)", Point, rosenbrock_loss, (), 1e-8, 1000
    yield "MLP 1-30-30-1 (1021)", lambda: MLP(30), mlp_loss, (x, y), 0.0, 50
    yield "MLP 1-98-98-1 (10095)", lambda: MLP(98), mlp_loss, (x, y), 0.0, 50


def hand_loop(make_model, loss, args, tx, gtol, maxiter):
    """The hand-written solve: returns ``(jitted solve, its arguments)``."""
    graphdef, params = nnx.split(make_model())
    params = nnx.as_pure(params)

    def f(p):
        return loss(nnx.merge(graphdef, p), *args)

    vg = optax.value_and_grad_from_state(f)

    @jax.jit
    def solve(x):
        def body(c):
            x, s, k = c
            v, g = vg(x, state=s)
            u, s = tx.update(g, s, x, value=v, grad=g, value_fn=f)
            return optax.apply_updates(x, u), s, k + 1

        def cond(c):
            _, s, k = c
            g = optax.tree.get(s, "grad")
            gn = jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(g)]))
            return (k < maxiter) & ((k == 0) | (gn > gtol))

        return jax.lax.while_loop(cond, body, (x, tx.init(x), 0))

    return solve, (params,)


def nnxopt_solve(make_model, loss, args, tx, gtol, maxiter):
    """The public call and the cached compiled loop behind it."""
    kw = dict(tx=tx, gtol=gtol, ftol=0.0, maxiter=maxiter)
    before = set(_cache._COMPILED)
    result = nnxopt.minimize(loss, make_model(), *args, **kw)
    (key,) = [k for k in _cache._COMPILED if k not in before and k[0] == "minimize"]
    solve = _cache._COMPILED[key]
    _, params, rest = split_model(make_model(), nnx.Param, None, "bench")
    dtype = np.float32
    inputs = (
        params,
        rest,
        [a for a in args],
        dtype(gtol),
        dtype(0.0),
        np.int32(15000),
        np.int32(0),
    )

    model = make_model()
    start = nnx.state(model)

    def call() -> None:  # from the same start each time, like the other two
        nnx.update(model, start)
        nnxopt.minimize(loss, model, *args, **kw)

    return result, solve, inputs, call, lambda: nnx.update(model, start)


def _run(fn, inputs) -> None:
    jax.block_until_ready(fn(*inputs))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--compiles", type=int, default=3)
    opts = ap.parse_args(argv)
    print(f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0]}")
    print(
        "| problem | tx | iters hand/nnxopt | hand ms | solve x | minimize x "
        "| reset ms | compile hand s | compile minimize x |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, make_model, make_loss, args, gtol, maxiter in problems():
        for tx_name, make_tx in (("optax", optax.lbfgs), ("nnxopt", nnxopt.lbfgs)):
            loss = make_loss()
            hand, hand_in = hand_loop(make_model, loss, args, make_tx(), gtol, maxiter)
            out = jax.block_until_ready(hand(*hand_in))
            result, solve, solve_in, call, reset = nnxopt_solve(
                make_model, loss, args, make_tx(), gtol, maxiter
            )
            contenders = {
                "hand": partial(_run, hand, hand_in),
                "solve": partial(_run, solve, solve_in),
                "minimize": call,
                "reset": reset,  # minimize's timing includes resetting the model
            }
            for run in contenders.values():
                run()
            times: dict[str, list[float]] = {k: [] for k in contenders}
            for _ in range(opts.repeats):
                for k, run in contenders.items():
                    t0 = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            minimize = med["minimize"] - med["reset"]
            # First call: fresh loss closures, so neither jit cache can hit.
            compile_t: dict[str, list[float]] = {"hand": [], "minimize": []}
            for _ in range(opts.compiles):
                loss2 = make_loss()
                h, h_in = hand_loop(make_model, loss2, args, make_tx(), gtol, maxiter)
                t0 = time.perf_counter()
                jax.block_until_ready(h(*h_in))
                compile_t["hand"].append(time.perf_counter() - t0)
                loss3 = make_loss()
                m = make_model()
                t0 = time.perf_counter()
                nnxopt.minimize(
                    loss3, m, *args, tx=make_tx(), gtol=gtol, ftol=0.0, maxiter=maxiter
                )
                compile_t["minimize"].append(time.perf_counter() - t0)
            ch = statistics.median(compile_t["hand"])
            cm = statistics.median(compile_t["minimize"])
            print(
                f"| {name} | {tx_name} | {int(out[2])}/{result.nit} "
                f"| {med['hand'] * 1e3:.3f} | {med['solve'] / med['hand']:.2f} "
                f"| {minimize / med['hand']:.2f} | {med['reset'] * 1e3:.3f} "
                f"| {ch:.2f} | {cm / ch:.2f} |"
            )


if __name__ == "__main__":
    main()
