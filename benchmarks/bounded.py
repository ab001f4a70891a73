"""L-BFGS-B on the bounded set: ``nnxopt.solve(..., bounds=...)`` against scipy.

Every problem of ``nnxopt.problems.bounded_problems()`` (float64), solved by
scipy's ``minimize(method="L-BFGS-B")`` and by ``nnxopt.solve`` with the same
bounds, ``gtol`` and ``ftol=0`` (so only the projected gradient stops a
solve), in the same run. nnxopt's solves share one compiled loop
(``problems.stack_bounded``). Reported per problem: loss evaluations of each
and their ratio, the final losses, and the warm wall time of one solve (the
median of ``--repeats`` runs; scipy's time includes its calls into a jitted
``value_and_grad``).

    python -m benchmarks.bounded [--gtol 1e-5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402

import nnxopt  # noqa: E402
from nnxopt import problems as P  # noqa: E402


def _scipy(
    p: P.BoundedProblem, gtol: float
) -> tuple[scipy.optimize.OptimizeResult, float]:
    fun = p.numpy_value_and_grad()
    x0 = np.clip(p.x0, p.lower, p.upper)
    options = dict(ftol=0.0, gtol=gtol, maxiter=15000, maxfun=15000)

    def run() -> scipy.optimize.OptimizeResult:
        return scipy.optimize.minimize(
            fun, x0, jac=True, method="L-BFGS-B", bounds=p.bounds, options=options
        )

    run()  # compile
    return run(), _timed(run)


_REPEATS = 5


def _timed(run) -> float:
    times = []
    for _ in range(_REPEATS):
        t0 = time.perf_counter()
        out = run()
        jax.block_until_ready(getattr(out, "params", 0))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    global _REPEATS
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bounded")
    parser.add_argument("--gtol", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    _REPEATS = args.repeats
    stack = P.stack_bounded()
    print(
        "| problem | n | scipy nfev | nnxopt nfev | ratio | scipy f | nnxopt f "
        "| scipy ms | nnxopt ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios, missed = [], []
    for k, p in enumerate(stack.problems):
        ref, t_ref = _scipy(p, args.gtol)
        x0, lo, up = (jnp.asarray(v) for v in stack.padded(k))
        kk = jnp.int32(k)

        def run(x0=x0, lo=lo, up=up, kk=kk) -> nnxopt.Solution:
            return nnxopt.solve(
                stack.fn, x0, kk, bounds=(lo, up), gtol=args.gtol, ftol=0.0
            )

        sol = run()
        t = _timed(run)
        solved = bool(sol.success) and float(sol.fun) <= ref.fun + 1e-9
        if ref.success and not solved:
            missed.append(p.name)
        ratio = int(sol.nfev) / ref.nfev
        ratios.append(ratio)
        print(
            f"| {p.name} | {p.n} | {ref.nfev} | {int(sol.nfev)} | {ratio:.2f} "
            f"| {ref.fun:.10g} | {float(sol.fun):.10g} | {1e3 * t_ref:.2f} "
            f"| {1e3 * t:.2f} |"
        )
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"\ngeometric mean of nnxopt/scipy evaluations: {geo:.3f}")
    print(
        "problems scipy solves and nnxopt does not: "
        + (", ".join(missed) if missed else "none")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
