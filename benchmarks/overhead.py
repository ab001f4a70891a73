"""Overhead of ``nnxopt.solve`` and ``nnxopt.minimize`` against a hand-written loop.

For each problem the same transform (``optax.lbfgs()``) runs three ways,
interleaved in one process so that load on the machine affects all alike:

- ``hand``: a jitted ``lax.while_loop`` over ``tx.update`` on raw pytrees,
  reusing the value and gradient the line search stored
  (``optax.value_and_grad_from_state``), stopping on ``gtol`` or ``maxiter``:
  the floor, with no bookkeeping;
- ``solve``: the public ``nnxopt.solve`` call (``ftol=0``, the same ``gtol``
  and ``maxiter``), Python side included;
- ``minimize``: the public ``nnxopt.minimize`` call on an NNX model.

The solves may stop after different numbers of evaluations (``solve`` also
stops on a failed line search), so the table compares the warm time *per
evaluation* (median over repeats, divided by ``nfev``), and the first-call time
(trace + compile + one solve, with a fresh loss function each time so no cache
hits). It also counts traces of the loss on a second call with new data of
the same shapes (0: no retrace), and the cost of the Ctrl-C poll (``solve``
with the poll against ``solve`` without it).

    python -m benchmarks.overhead [--repeats 21] [--compiles 3] [--only NAME]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nnxopt
from nnxopt import _loop

jax.config.update("jax_enable_x64", True)


class Vector(nnx.Module):
    def __init__(self, x0: Any) -> None:
        self.x = nnx.Param(jnp.asarray(x0))


class MLP(nnx.Module):
    def __init__(self, width: int) -> None:
        rngs = nnx.Rngs(0)
        kw = dict(param_dtype=jnp.float64, rngs=rngs)
        self.l1 = nnx.Linear(1, width, **kw)
        self.l2 = nnx.Linear(width, width, **kw)
        self.l3 = nnx.Linear(width, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l3(jnp.tanh(self.l2(jnp.tanh(self.l1(x)))))


def rosenbrock_fn() -> Callable:
    def fun(x):
        return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    return fun


def logistic_fn() -> Callable:
    def fun(x, a, y):
        z = y * (a @ x[:-1] + x[-1])
        return jnp.mean(jnp.logaddexp(0.0, -z)) + 5e-3 * jnp.sum(x[:-1] ** 2)

    return fun


def mlp_fn(graphdef: Any) -> Callable:
    def fun(p, x, y):
        return jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2)

    return fun


def logistic_data(seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(500, 20))
    y = np.sign(a @ rng.normal(size=20) + 0.5 * rng.normal(size=500))
    return jnp.asarray(a), jnp.asarray(y)


def mlp_data(seed: int) -> tuple:
    x = jnp.linspace(-3.0, 3.0, 128, dtype=jnp.float64)[:, None]
    return x, jnp.sin(2.0 * x) + 0.1 * seed * x**2


class Problem:
    """A problem: ``make_fun()`` (fresh closures), start, data, NNX form."""

    def __init__(self, name, make_fun, x0, data, gtol, maxiter, model=None):
        self.name, self.make_fun, self.x0 = name, make_fun, x0
        self.data, self.gtol, self.maxiter = data, gtol, maxiter
        # (make_model, make_loss): the same problem as an NNX model
        self.model = model


def problems() -> list[Problem]:
    rosen2 = jnp.asarray([-1.2, 1.0])
    rosen100 = jnp.tile(rosen2, 50)
    out = [
        Problem("Rosenbrock (2)", rosenbrock_fn, rosen2, lambda s: (), 1e-6, 1000),
        Problem("Rosenbrock (100)", rosenbrock_fn, rosen100, lambda s: (), 1e-6, 1000),
        Problem(
            "logistic 500x20", logistic_fn, jnp.zeros(21), logistic_data, 1e-6, 1000
        ),
    ]
    graphdef, params = nnx.split(MLP(30))
    out.append(
        Problem(
            "MLP 1-30-30-1 (1021)",
            lambda: mlp_fn(graphdef),
            nnx.as_pure(params),
            mlp_data,
            0.0,
            100,
            model=lambda: MLP(30),
        )
    )
    return out


def hand_solver(fun: Callable, gtol: float, maxiter: int) -> Callable:
    """The hand-written loop: jitted ``solve(x, *data) -> (x, nfev, nit)``."""
    tx = optax.lbfgs()

    @jax.jit
    def solve(x, *data):
        def f(p):
            return fun(p, *data)

        vg = optax.value_and_grad_from_state(f)

        def body(c):
            x, s, k, n = c
            v, g = vg(x, state=s)
            u, s = tx.update(g, s, x, value=v, grad=g, value_fn=f)
            steps = optax.tree.get(s, "num_linesearch_steps")
            return optax.apply_updates(x, u), s, k + 1, n + steps

        def cond(c):
            _, s, k, _ = c
            g = optax.tree.get(s, "grad")
            gn = jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(g)]))
            return (k < maxiter) & ((k == 0) | (gn > gtol))

        x, _, k, n = jax.lax.while_loop(cond, body, (x, tx.init(x), 0, 1))
        return x, n, k

    return solve


def timed(run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - t0


def first_call(
    prob: Problem, loss: Callable, make_model: Callable, data: tuple, kw: dict
) -> dict[str, float]:
    """Trace + compile + one solve each, with fresh functions (no cache hit)."""
    hand = hand_solver(prob.make_fun(), prob.gtol, prob.maxiter)
    fun = prob.make_fun()

    def fresh_loss(m, *d):
        return loss(m, *d)

    model = make_model()
    return {
        "hand": timed(lambda: hand(prob.x0, *data)),
        "solve": timed(lambda: nnxopt.solve(fun, prob.x0, *data, **kw)),
        "minimize": timed(lambda: nnxopt.minimize(fresh_loss, model, *data, **kw).fun),
    }


def nnx_loss(prob: Problem, fun: Callable) -> tuple[Callable, Callable]:
    """``(make_model, loss(model, *data))``: the problem as an NNX model."""
    if prob.model is None:

        def loss(m, *d):
            return fun(m.x[...], *d)

        return (lambda: Vector(prob.x0)), loss
    graphdef = nnx.graphdef(prob.model())
    loss_of_params = mlp_fn(graphdef)

    def nnx_mlp_loss(m, *d):
        return loss_of_params(nnx.state(m, nnx.Param), *d)

    return prob.model, nnx_mlp_loss


def without_poll(fun: Callable, x0: Any, data: tuple, kw: dict, repeats: int) -> float:
    """Median time of the same solve without the Ctrl-C poll (as under jit)."""
    available = _loop.INTERRUPT.available
    _loop.INTERRUPT.available = lambda: False  # type: ignore[method-assign]
    try:
        nnxopt.solve(fun, x0, *data, **kw)
        return statistics.median(
            timed(lambda: nnxopt.solve(fun, x0, *data, **kw)) for _ in range(repeats)
        )
    finally:
        _loop.INTERRUPT.available = available  # type: ignore[method-assign]


def retraces(prob: Problem, fun: Callable, kw: dict) -> int:
    """Traces of the loss on a second call with new data of the same shapes."""
    traces = {"n": 0}

    def counted(*a):
        traces["n"] += 1
        return fun(*a)

    nnxopt.solve(counted, prob.x0, *prob.data(1), **kw)
    before = traces["n"]
    nnxopt.solve(counted, prob.x0, *prob.data(2), **kw)
    return traces["n"] - before


def measure(prob: Problem, repeats: int, compiles: int) -> dict[str, float]:
    fun = prob.make_fun()
    data = prob.data(0)
    kw = dict(tx=optax.lbfgs(), gtol=prob.gtol, ftol=0.0, maxiter=prob.maxiter)
    hand = hand_solver(fun, prob.gtol, prob.maxiter)
    _, hand_nfev, _ = jax.block_until_ready(hand(prob.x0, *data))
    sol = nnxopt.solve(fun, prob.x0, *data, **kw)

    make_model, loss = nnx_loss(prob, fun)
    model = make_model()
    # A copy: minimize updates the model's Variables in place.
    start = nnx.state(nnx.clone(model))
    res = nnxopt.minimize(loss, model, *data, **kw)

    def run_minimize():
        nnx.update(model, start)
        return nnxopt.minimize(loss, model, *data, **kw).fun

    runs = {
        "hand": lambda: hand(prob.x0, *data),
        "solve": lambda: nnxopt.solve(fun, prob.x0, *data, **kw),
        "minimize": run_minimize,
        "reset": lambda: nnx.update(model, start),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            times[k].append(timed(run))
    med = {k: statistics.median(v) for k, v in times.items()}
    per_eval = {
        "hand": med["hand"] / int(hand_nfev),
        "solve": med["solve"] / int(sol.nfev),
        "minimize": (med["minimize"] - med["reset"]) / res.nfev,
    }

    no_poll = without_poll(fun, prob.x0, data, kw, repeats)

    first: dict[str, list[float]] = {"hand": [], "solve": [], "minimize": []}
    for _ in range(compiles):
        for name, seconds in first_call(prob, loss, make_model, data, kw).items():
            first[name].append(seconds)
    first_med = {k: statistics.median(v) for k, v in first.items()}

    return dict(
        nfev_hand=int(hand_nfev),
        nfev_solve=int(sol.nfev),
        nfev_minimize=res.nfev,
        hand_us=per_eval["hand"] * 1e6,
        solve_x=per_eval["solve"] / per_eval["hand"],
        minimize_x=per_eval["minimize"] / per_eval["hand"],
        first_hand=first_med["hand"],
        first_solve_x=first_med["solve"] / first_med["hand"],
        first_minimize_x=first_med["minimize"] / first_med["hand"],
        poll_x=med["solve"] / no_poll,
        retraces=retraces(prob, fun, kw),
    )


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--compiles", type=int, default=3)
    ap.add_argument(
        "--only", default="", help="run the problems whose name contains this"
    )
    opts = ap.parse_args(argv)
    print(f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0]}")
    print(
        "| problem | nfev hand/solve/minimize | hand µs/eval | solve x | minimize x "
        "| first hand s | first solve x | first minimize x | poll x | retraces |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for prob in problems():
        if opts.only not in prob.name:
            continue
        r = measure(prob, opts.repeats, opts.compiles)
        rows.append(r)
        print(
            f"| {prob.name} | {r['nfev_hand']}/{r['nfev_solve']}/{r['nfev_minimize']} "
            f"| {r['hand_us']:.1f} | {r['solve_x']:.2f} | {r['minimize_x']:.2f} "
            f"| {r['first_hand']:.2f} | {r['first_solve_x']:.2f} "
            f"| {r['first_minimize_x']:.2f} | {r['poll_x']:.2f} | {r['retraces']} |",
            flush=True,
        )
    keys = ("solve_x", "minimize_x", "first_solve_x", "first_minimize_x", "poll_x")
    means = {k: geomean([r[k] for r in rows]) for k in keys}
    print(
        f"| geometric mean | | | {means['solve_x']:.2f} | {means['minimize_x']:.2f} "
        f"| | {means['first_solve_x']:.2f} | {means['first_minimize_x']:.2f} "
        f"| {means['poll_x']:.2f} | |"
    )


if __name__ == "__main__":
    main()
