"""Many small solves: ``jit(vmap(solve))`` against a Python loop of ``solve``
and against scipy's L-BFGS-B in a loop, in one run.

Two families of small float64 problems, a different instance per member:

- ``logistic``: L2-regularised logistic regression on 200 x 10 data;
- ``quadratic``: ``x A x / 2 - b x`` with ``n = 10`` and condition numbers
  from 1 to 1e4.

For each batch size it reports the wall time per member of the batched solve
(compile excluded: the best of 10 warm calls), of a loop of ``nnxopt.solve``
(warm, each call compiled already) and of ``scipy.optimize.minimize(method=
"L-BFGS-B")`` with NumPy objective and gradient, and the ratios. The loops are
timed over ``min(batch, --loop-members)`` members (best of 3) and reported per
member (a loop's cost is linear in its length). Iterations and evaluations of every
member of the batch equal the single solves (``tests/test_batched.py``).

    python -m benchmarks.batched [--sizes 64 256 1024] [--loop-members 128]
        [--maxiter N] [--history K]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import nnxopt

jax.config.update("jax_enable_x64", True)


def logistic(w, x, labels):
    z = x @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - labels * z) + 1e-2 * jnp.sum(w**2)


def logistic_np(w, x, labels):
    z = x @ w
    p = 1.0 / (1.0 + np.exp(-z))
    value = np.mean(np.logaddexp(0.0, z) - labels * z) + 1e-2 * np.sum(w**2)
    return value, x.T @ (p - labels) / len(z) + 2e-2 * w


def quadratic(x, a, b):
    return 0.5 * x @ a @ x - b @ x


def quadratic_np(x, a, b):
    ax = a @ x
    return 0.5 * x @ ax - b @ x, ax - b


def make(family: str, members: int, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    if family == "logistic":
        x = rng.normal(size=(members, 200, 10))
        w = rng.normal(size=(members, 10))
        labels = (
            rng.uniform(size=(members, 200))
            < 1 / (1 + np.exp(-np.einsum("bij,bj->bi", x, w)))
        ).astype(float)
        return np.zeros((members, 10)), x, labels
    q = np.linalg.qr(rng.normal(size=(members, 10, 10)))[0]
    eig = 10.0 ** (rng.uniform(0, 4, size=(members, 1)) * np.linspace(0, 1, 10))
    a = np.einsum("bij,bj,bkj->bik", q, eig, q)
    return np.zeros((members, 10)), a, rng.normal(size=(members, 10))


MAXITER = 15000
HISTORY: int | None = None
STAGES = 1


FAMILIES = {"logistic": (logistic, logistic_np), "quadratic": (quadratic, quadratic_np)}


def timed(fn, repeats: int = 3) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(family: str, members: int, loop_members: int) -> dict:
    fun, fun_np = FAMILIES[family]
    x0, *data = make(family, members)
    jx0, jdata = jnp.asarray(x0), [jnp.asarray(d) for d in data]
    batched = jax.jit(
        jax.vmap(
            lambda p, *a: nnxopt.solve(
                fun, p, *a, maxiter=MAXITER, history=HISTORY, batch_stages=STAGES
            )
        )
    )
    t0 = time.perf_counter()
    sol = batched(jx0, *jdata)
    jax.block_until_ready(sol)
    t_first = time.perf_counter() - t0
    t_batch = timed(lambda: jax.block_until_ready(batched(jx0, *jdata)), repeats=10)
    m = min(members, loop_members)
    nnxopt.solve(
        fun, jx0[0], *(d[0] for d in jdata), maxiter=MAXITER, history=HISTORY
    )  # compile the single solve
    singles = [(jx0[i], *(d[i] for d in jdata)) for i in range(m)]

    def loop():
        for p, *a in singles:
            sol = nnxopt.solve(fun, p, *a, maxiter=MAXITER, history=HISTORY)
            jax.block_until_ready(sol.params)

    t_loop = timed(loop) / m

    def scipy_loop():
        for i in range(m):
            scipy.optimize.minimize(
                fun_np, x0[i], args=tuple(d[i] for d in data), jac=True,
                method="L-BFGS-B",
            )  # fmt: skip

    t_scipy = timed(scipy_loop) / m
    per_member = t_batch / members
    return {
        "family": family,
        "members": members,
        "batched_ms": 1e3 * per_member,
        "loop_ms": 1e3 * t_loop,
        "scipy_ms": 1e3 * t_scipy,
        "vs_loop": t_loop / per_member,
        "vs_scipy": t_scipy / per_member,
        "nit": (int(np.min(sol.nit)), int(np.max(sol.nit))),
        "success": float(np.mean(np.asarray(sol.success))),
        "first_s": t_first,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--loop-members", type=int, default=128)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--maxiter", type=int, default=15000)
    parser.add_argument(
        "--history",
        type=int,
        default=None,
        help="solve's history= (default: one per iteration)",
    )
    parser.add_argument(
        "--stages", type=int, default=1, help="solve's batch_stages= (default 1)"
    )
    args = parser.parse_args(argv)
    global MAXITER, HISTORY, STAGES
    MAXITER, HISTORY, STAGES = args.maxiter, args.history, args.stages
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, float64")
    print(
        "| problem | members | jit(vmap(solve)) ms/member | loop of solve ms/member "
        "| scipy loop ms/member | x loop | x scipy | nit min-max | success "
        "| first batched call s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for family in args.families:
        for members in args.sizes:
            r = bench(family, members, args.loop_members)
            print(
                f"| {r['family']} | {r['members']} | {r['batched_ms']:.3f} | "
                f"{r['loop_ms']:.3f} | {r['scipy_ms']:.3f} | {r['vs_loop']:.1f} | "
                f"{r['vs_scipy']:.1f} | {r['nit'][0]}-{r['nit'][1]} | "
                f"{r['success']:.0%} | {r['first_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
