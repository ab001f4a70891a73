"""Per-iteration cost of ``Optimizer.minimize_step`` against its peers.

Three ways to run one L-BFGS iteration (optax.lbfgs, zoom line search) on the
same MLP, measured side by side in one process:

- ``optax loop``: the hand-written jitted optax step on raw pytrees with
  ``optax.value_and_grad_from_state`` (the floor: no NNX at all);
- ``nnxopt``: ``nnxopt.Optimizer.minimize_step`` under ``nnx.jit`` (tree mode
  and graph mode), under ``nnx.jit_partial`` (model and optimizer flattened
  once: the recommended fast pattern), under ``jax.jit`` over ``nnx.split``
  state, and called eagerly (its own cached jit);
- ``nnx.Optimizer``: upstream, under ``nnx.jit``, with the hand-written
  split/merge ``value_fn`` users write today (recomputes value and gradient).

Reports evaluations per iteration (counted with a host callback) and the median
time per step over repeats (compile excluded), as ratios to the optax loop.

    python -m benchmarks.step_overhead [--width 64] [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import nnxopt


class MLP(nnx.Module):
    def __init__(self, width: int, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(1, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.l3 = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x):
        return self.l3(jnp.tanh(self.l2(jnp.tanh(self.l1(x)))))


def data(n: int = 256):
    x = jnp.linspace(-3.0, 3.0, n)[:, None]
    return x, jnp.sin(2.0 * x) + 0.1 * x**2


class Counter:
    """Counts evaluations with a host callback; ``Counter(False)`` is a no-op."""

    def __init__(self, active: bool = True) -> None:
        self.n = 0
        self.active = active

    def tick(self, v):
        if self.active:
            jax.debug.callback(self._inc, v)
        return v

    def _inc(self, _):
        self.n += 1


def _time(step, steps: int, repeats: int) -> float:
    """Median seconds per step over ``repeats`` runs of ``steps`` steps."""
    step()  # compile
    jax.block_until_ready(step())
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for _ in range(steps):
            out = step()
        jax.block_until_ready(out)
        per_step.append((time.perf_counter() - t0) / steps)
    return statistics.median(per_step)


def optax_loop(width, x, y, counter):
    model = MLP(width)
    graphdef, params = nnx.split(model)
    params = nnx.as_pure(params)

    def fn(p):
        return counter.tick(jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2))

    tx = optax.lbfgs()
    vg = optax.value_and_grad_from_state(fn)

    @jax.jit
    def step(p, s):
        v, g = vg(p, state=s)
        u, s = tx.update(g, s, p, value=v, grad=g, value_fn=fn)
        return optax.apply_updates(p, u), s, v

    carry = [params, tx.init(params)]

    def run():
        carry[0], carry[1], v = step(carry[0], carry[1])
        return v

    return run


def nnxopt_step(width, x, y, counter, *, graph, jit):
    model = MLP(width)
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param, graph=graph)

    def loss_fn(m, x, y):
        return counter.tick(jnp.mean((m(x) - y) ** 2))

    if jit:
        step = nnx.jit(
            lambda m, o, x, y: o.minimize_step(m, loss_fn, x, y), graph=graph
        )
    else:

        def step(m, o, x, y):
            return o.minimize_step(m, loss_fn, x, y)

    return lambda: step(model, opt, x, y)


def nnxopt_split_state(width, x, y, counter):
    """minimize_step inside jax.jit over nnx.split state: no NNX work per call."""
    model = MLP(width)
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param, graph=False)
    graphdef, state = nnx.split((model, opt), graph=False)

    def loss_fn(m, x, y):
        return counter.tick(jnp.mean((m(x) - y) ** 2))

    @jax.jit
    def step(state, x, y):
        m, o = nnx.merge(graphdef, state)
        loss = o.minimize_step(m, loss_fn, x, y)
        return nnx.state((m, o), graph=False), loss

    carry = [state]

    def run():
        carry[0], loss = step(carry[0], x, y)
        return loss

    return run


def nnxopt_jit_partial(width, x, y, counter):
    """minimize_step under ``nnx.jit_partial``: (model, optimizer) flattened once."""
    model = MLP(width)
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param, graph=False)

    def loss_fn(m, x, y):
        return counter.tick(jnp.mean((m(x) - y) ** 2))

    def step(m, o, x, y):
        return o.minimize_step(m, loss_fn, x, y)

    run = nnx.jit_partial(step, model, opt, graph=False)
    return lambda: run(x, y)


def nnx_optimizer(width, x, y, counter, *, graph):
    model = MLP(width)
    opt = nnx.Optimizer(model, optax.lbfgs(), wrt=nnx.Param, graph=graph)

    def loss_fn(m):
        return counter.tick(jnp.mean((m(x) - y) ** 2))

    @nnx.jit(graph=graph)
    def step(m, o):
        graphdef, _, rest = nnx.split(m, nnx.Param, ...)

        def value_fn(p):  # what users hand-write today
            return loss_fn(nnx.merge(graphdef, p, rest))

        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads, value=loss, grad=grads, value_fn=value_fn)
        return loss

    return lambda: step(model, opt)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    x, y = data()
    print(
        f"jax {jax.__version__}, flax, optax {optax.__version__}; "
        f"{jax.devices()[0].platform}; optax.lbfgs (zoom); median of {args.repeats}"
    )
    for width in args.width:
        runners = {
            "optax loop (jax.jit, raw pytrees)": partial(optax_loop, width, x, y),
            "nnxopt minimize_step, nnx.jit tree mode": partial(
                nnxopt_step, width, x, y, graph=False, jit=True
            ),
            "nnxopt minimize_step, nnx.jit graph mode": partial(
                nnxopt_step, width, x, y, graph=True, jit=True
            ),
            "nnxopt minimize_step, jax.jit over split state": partial(
                nnxopt_split_state, width, x, y
            ),
            "nnxopt minimize_step, nnx.jit_partial tree mode": partial(
                nnxopt_jit_partial, width, x, y
            ),
            "nnxopt minimize_step, no jit (own cache)": partial(
                nnxopt_step, width, x, y, graph=False, jit=False
            ),
            "nnx.Optimizer + hand-written value_fn, nnx.jit": partial(
                nnx_optimizer, width, x, y, graph=True
            ),
        }
        n_params = sum(
            p.size for p in jax.tree.leaves(nnx.state(MLP(width), nnx.Param))
        )
        print(f"\nMLP 1-{width}-{width}-1 ({n_params} parameters), 256 points")
        print("| solver | evals / iter | us / step | ratio to optax loop |")
        print("|---|---:|---:|---:|")
        base = None
        for name, make in runners.items():
            counter = Counter()
            run = make(counter)
            evals_steps = 30
            for _ in range(evals_steps):
                run()
            jax.effects_barrier()
            evals = counter.n / evals_steps
            seconds = _time(make(Counter(active=False)), args.steps, args.repeats)
            base = base or seconds
            print(
                f"| {name} | {evals:.2f} | {seconds * 1e6:.0f} | {seconds / base:.2f} |"
            )


if __name__ == "__main__":
    main()
