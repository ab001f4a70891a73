"""Cost of ``minimize_step``'s staleness check, as a share of one step.

``Optimizer.minimize_step`` reuses the value and gradient its line search
stored only if the model's ``wrt`` parameters equal the stored iterate and the
arguments' fingerprint is unchanged. This times the compiled step of an
L-BFGS iteration on the ~1.2k-parameter MLP of ``benchmarks.step_overhead``
(width 32, 256 points) with the check and with the check replaced by constants
(the reuse decision the step made before the check existed), interleaved in one
process; both reuse on every step, so they differ by the check alone.

    python -m benchmarks.reuse_check [--steps 300] [--rounds 7] [--clock process]

It also prints XLA's cost analysis (flops, bytes accessed) of both compiled steps:
deterministic, where the clocks are not.

``--clock process`` times the CPU this process used (all its threads) instead of
wall time: on a machine shared with other jobs, time spent waiting for a core
is not counted, so the comparison is far less noisy (use it on CPU only).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import nnxopt
from nnxopt import _optimizer
from nnxopt._objective import Objective, split_model

from .step_overhead import MLP, data


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def compiled_step(model, opt, checked: bool):
    """The jitted pure step and its inputs, traced with or without the check."""
    graphdef, params, rest = split_model(model, nnx.Param, None, "bench")
    objective = Objective(graphdef, nnx.Param, loss_fn, False, None, "bench")
    x, y = data()
    static = _optimizer._partition(((x, y), {}))[1]
    fn = functools.partial(_optimizer._step, opt.tx, objective, static)
    patches = []
    if not checked:
        patches = [
            mock.patch.object(
                _optimizer, "fingerprint", lambda key, trees, dtype: jnp.zeros(3, dtype)
            ),
            mock.patch.object(_optimizer, "_tree_equal", lambda a, b: True),
        ]
    for p in patches:
        p.start()
    try:
        state = (params, rest, nnx.as_pure(opt.opt_state), nnx.as_pure(opt.reuse_key))
        jitted = jax.jit(fn).lower(*state, [x, y]).compile()
    finally:
        for p in patches:
            p.stop()
    return jitted, state, [x, y]


CLOCK = time.perf_counter


def run(jitted, state, dynamic, steps: int) -> tuple[float, tuple]:
    params, rest, opt_state, key = state
    out = None
    start = CLOCK()
    for _ in range(steps):
        params, rest, opt_state, key, loss, _, _ = jitted(
            params, rest, opt_state, key, dynamic
        )
        out = loss
    jax.block_until_ready(out)
    return (CLOCK() - start) / steps, (params, rest, opt_state, key)


def check_alone(state, dynamic, steps: int, rounds: int) -> float:
    """Median time of the check as a compiled call of its own."""
    params, rest, _, key = state

    @jax.jit
    def check(params, rest, key, dynamic):
        fp = _optimizer.fingerprint(0, (dynamic, rest), key.fingerprint.dtype)
        same = _optimizer._tree_equal(params, key.params)
        return same & jnp.all(fp == key.fingerprint)

    jax.block_until_ready(check(params, rest, key, dynamic))
    times = []
    for _ in range(rounds):
        start = CLOCK()
        for _ in range(steps):
            out = check(params, rest, key, dynamic)
        jax.block_until_ready(out)
        times.append((CLOCK() - start) / steps)
    return statistics.median(times)


def _cost(compiled) -> tuple[float, float]:
    """``(flops, bytes accessed)`` of a compiled step from XLA's cost analysis."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clock", choices=["wall", "process"], default="wall")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter

    model = MLP(32)
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
    x, y = data()
    for _ in range(3):  # a stored value and gradient to reuse
        opt.minimize_step(model, loss_fn, x, y)
    # Both run from the same state, the unchecked variant with its constant key.
    with_check = compiled_step(model, opt, True)
    state = with_check[1]
    key = _optimizer.ReuseKey(state[3].params, jnp.zeros_like(state[3].fingerprint))
    without = compiled_step(model, opt, False)
    without = (without[0], (*state[:3], key), without[2])

    times: dict[str, list[float]] = {"check": [], "no check": []}
    variants = [("check", with_check), ("no check", without)]
    for i in range(args.rounds):
        # Alternate which runs first, so that neither always follows the other.
        for name, (jitted, s, dyn) in variants[:: 1 - 2 * (i % 2)]:
            run(jitted, s, dyn, 5)  # warm
            t, _ = run(jitted, s, dyn, args.steps)
            times[name].append(t)
    on, off = statistics.median(times["check"]), statistics.median(times["no check"])
    alone = check_alone(state, with_check[2], args.steps, args.rounds)
    print(
        f"MLP 1-32-32-1: {n} parameters, 256 points, optax.lbfgs, "
        f"{jax.devices()[0]}, {args.clock} clock"
    )
    print(f"step with check    : {on * 1e6:8.1f} us (median of {args.rounds})")
    print(f"step without check : {off * 1e6:8.1f} us")
    print(f"check cost         : {100 * (on - off) / off:+.1f}% of a step")
    # The noise: the same difference round by round (pairs run back to back).
    paired = sorted(
        100 * (a - b) / b
        for a, b in zip(times["check"], times["no check"], strict=True)
    )
    q = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    print(
        f"  per round        : median {statistics.median(paired):+.1f}%, quartiles "
        f"{q[0]:+.1f}% / {q[2]:+.1f}%, range {paired[0]:+.1f}% .. {paired[-1]:+.1f}%"
    )
    spread = sorted(100 * (t / off - 1) for t in times["no check"])
    print(
        f"  noise            : the step without check varies {spread[0]:+.1f}% .. "
        f"{spread[-1]:+.1f}% around its median over the rounds"
    )
    # XLA's own estimate of the work, deterministic where the clocks are not.
    costs = [_cost(v[0]) for v in (with_check, without)]
    for label, i in (("flops", 0), ("bytes accessed", 1)):
        a, b = costs[0][i], costs[1][i]
        print(
            f"  XLA {label:<13}: {a:.0f} with, {b:.0f} without the check "
            f"({100 * (a - b) / b:+.2f}%)"
        )
    print(
        f"check alone        : {alone * 1e6:8.1f} us = {100 * alone / off:.1f}% of a "
        "step (its own compiled call: an upper bound, dispatch included)"
    )


if __name__ == "__main__":
    main()
