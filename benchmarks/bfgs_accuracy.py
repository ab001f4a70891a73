"""Same-budget accuracy: L-BFGS against dense BFGS and its self-scaled variants.

The 1-D Poisson PINN of ``nnxopt.problems.pinn_poisson_1d`` (tanh network
1-20-20-1, 481 parameters, 40 collocation points, float64), the 2-D one of
``pinn_poisson_2d`` (2-20-20-1, 501 parameters, 8 x 8 interior points; with
``--problems pinn2d``) and the ``sin``
regression of ``mlp_regression`` (1-32-1, 97 parameters), solved from the same
start by ``nnxopt.minimize`` with each transform until it has spent a budget of
loss evaluations (``maxfev``; ``gtol = ftol = 0``, so only the budget or a
failed line search stops a solve). Reported per budget: the final loss and,
for the PINN, the relative L2 error of ``u`` against the exact solution
``sin(pi x)`` on 201 points (2-D: ``sin(pi x) sin(pi y)`` on 21 x 21). Peers: scipy ``BFGS`` (always installed; stopped by
its callback once it has spent the budget) and optimistix ``BFGS`` when
installed (skipped with one line otherwise).

    python -m benchmarks.bfgs_accuracy [--budgets 2000 5000] [--problems pinn1d pinn2d sin]
    python -m benchmarks.bfgs_accuracy --cost 1000 4000   # ms per update
    python -m benchmarks.bfgs_accuracy --problems burgers --budgets 2000 5000 20000 \
        --solvers lbfgs bfgs ssbfgs ssbroyden --one-solve

``burgers``: the 1-D viscous Burgers PINN of ``pinn_burgers_1d`` (2-20-20-1,
501 parameters, nu = 0.01/pi, 32 x 16 interior points), relative L2 error
against the Cole–Hopf solution ``burgers_solution`` on 101 x 11 points.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy.optimize  # noqa: E402
from flax import nnx  # noqa: E402

import nnxopt  # noqa: E402
from nnxopt import problems as P  # noqa: E402

SOLVERS = {
    "lbfgs": nnxopt.lbfgs,
    "bfgs": nnxopt.bfgs,
    "bfgs-H0=I": lambda: nnxopt.bfgs(scale_init_precond=False),
    "ssbfgs": lambda: nnxopt.bfgs(self_scaling=True),
    "ssbroyden": lambda: nnxopt.bfgs(self_scaling=True, broyden_phi=None),
}
GRID = jnp.linspace(0.0, 1.0, 201, dtype=jnp.float64)


def make_problem(name: str) -> P.NNXProblem:
    if name == "pinn1d":
        return P.pinn_poisson_1d(width=20, depth=2, num_points=40, dtype=jnp.float64)
    if name == "pinn2d":
        return P.pinn_poisson_2d(width=20, depth=2, num_side=8, dtype=jnp.float64)
    if name == "sin":
        return P.mlp_regression(width=32, depth=1, dtype=jnp.float64)
    if name == "burgers":
        return P.pinn_burgers_1d(width=20, depth=2, dtype=jnp.float64)
    raise SystemExit(f"unknown problem {name!r}; known: pinn1d, pinn2d, sin, burgers")


@functools.cache
def burgers_reference() -> tuple[jax.Array, np.ndarray]:
    """Points ``(x, t)`` (101 x 11 on ``[-1, 1] x [0, 1]``) and the exact ``u``."""
    gx, gt = np.meshgrid(np.linspace(-1.0, 1.0, 101), np.linspace(0.0, 1.0, 11))
    xt = np.stack([gx.ravel(), gt.ravel()], axis=1)
    return jnp.asarray(xt), P.burgers_solution(xt[:, 0], xt[:, 1])


def l2_error(name: str, model: nnx.Module) -> float:
    """Relative L2 error of a PINN against its exact solution; nan otherwise."""
    if name == "pinn1d":
        u = model(GRID[:, None])[:, 0]
        exact = jnp.sin(jnp.pi * GRID)
    elif name == "pinn2d":
        gx, gy = jnp.meshgrid(GRID[::10], GRID[::10])
        xy = jnp.stack([gx.ravel(), gy.ravel()], axis=1)
        u = model(xy)[:, 0]
        exact = jnp.sin(jnp.pi * xy[:, 0]) * jnp.sin(jnp.pi * xy[:, 1])
    elif name == "burgers":
        xt, exact = burgers_reference()
        u = model(xt)[:, 0]
    else:
        return math.nan
    return float(jnp.linalg.norm(u - exact) / jnp.linalg.norm(exact))


def run_nnxopt_once(
    problem: P.NNXProblem, name: str, solver: str, budgets: list[int]
) -> list[tuple]:
    """One solve to the largest budget; the loss at each budget from its history
    (the last iterate reached within it); the L2 error at the end only."""
    _, err, _, seconds = run_nnxopt(problem, name, solver, max(budgets), keep)
    history = keep["history"]
    rows = []
    for budget in sorted(budgets):
        within = np.nonzero(history.nfev <= budget)[0]
        at = within[-1] if within.size else 0
        last = budget == max(budgets)
        rows.append((
            budget, float(history.value[at]), err if last else math.nan,
            int(history.nfev[at]), seconds if last else math.nan,
        ))  # fmt: skip
    return rows


keep: dict[str, object] = {}


def run_nnxopt(
    problem: P.NNXProblem, name: str, solver: str, budget: int, out: dict | None = None
) -> tuple:
    model = problem.make_model()
    start = time.perf_counter()
    result = nnxopt.minimize(
        problem.loss_fn,
        model,
        *problem.batch,
        tx=SOLVERS[solver](),
        maxiter=budget,
        maxfev=budget,
        gtol=0.0,
        ftol=0.0,
    )
    seconds = time.perf_counter() - start
    if out is not None:
        out["history"] = result.history.trim()
    return float(result.fun), l2_error(name, model), int(result.nfev), seconds


def run_scipy(problem: P.NNXProblem, name: str, budget: int) -> tuple:
    model = problem.make_model()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat0, unravel = jax.flatten_util.ravel_pytree(params)

    @jax.jit
    def value_and_grad(flat):
        def loss(f):
            m = nnx.merge(graphdef, unravel(f), rest)
            return problem.loss_fn(m, *problem.batch)

        return jax.value_and_grad(loss)(flat)

    count = {"n": 0}

    def fun(x):
        count["n"] += 1
        f, g = value_and_grad(jnp.asarray(x))
        return float(f), np.asarray(g, np.float64)

    def stop(intermediate_result):
        if count["n"] >= budget:
            raise StopIteration

    start = time.perf_counter()
    out = scipy.optimize.minimize(
        fun, np.asarray(flat0), jac=True, method="BFGS", callback=stop,
        options={"gtol": 0.0, "maxiter": budget},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    nnx.update(model, unravel(jnp.asarray(out.x)))
    return float(out.fun), l2_error(name, model), count["n"], seconds


def cost_per_iteration(n: int, solver: str) -> float:
    """Milliseconds per update on a quadratic with a fixed step (no search)."""
    tx = (
        nnxopt.lbfgs(learning_rate=0.1)
        if solver == "lbfgs"
        else nnxopt.bfgs(learning_rate=0.1)
    )
    scale = jnp.linspace(1.0, 10.0, n)

    def fn(x):
        return 0.5 * jnp.sum(scale * x**2)

    def step(carry):
        x, state = carry
        value, grad = jax.value_and_grad(fn)(x)
        updates, state = tx.update(grad, state, x, value=value, grad=grad)
        return optax.apply_updates(x, updates), state

    steps = 20
    run = jax.jit(lambda c: jax.lax.fori_loop(0, steps, lambda i, c: step(c), c))
    x = jnp.ones(n)
    carry = jax.block_until_ready(run((x, tx.init(x))))  # compile and warm up
    start = time.perf_counter()
    jax.block_until_ready(run(carry))
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[2000, 5000])
    parser.add_argument("--problems", nargs="+", default=["pinn1d", "sin"])
    parser.add_argument("--solvers", nargs="+", default=[*SOLVERS, "scipy-bfgs"])
    parser.add_argument(
        "--cost", type=int, nargs="*", default=None,
        help="instead: time one update at these sizes n (fixed step)",
    )  # fmt: skip
    parser.add_argument(
        "--one-solve", action="store_true",
        help="one nnxopt solve per solver to the largest budget, the loss at the "
        "others read from its history (rel. L2 error at the largest only)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.cost is not None:
        for n in args.cost:
            for solver in ("lbfgs", "bfgs"):
                ms = cost_per_iteration(n, solver)
                print(f"n = {n}: {solver} {ms:.2f} ms per update", flush=True)
        return
    try:
        import optimistix  # noqa: F401
    except ImportError:
        print("optimistix not installed: its BFGS peer is skipped.")
    print("| problem | solver | budget | loss | rel. L2 error | nfev | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.problems:
        problem = make_problem(name)
        for solver in args.solvers:
            if args.one_solve and solver != "scipy-bfgs":
                for budget, fun, err, nfev, seconds in run_nnxopt_once(
                    problem, name, solver, args.budgets
                ):
                    print(
                        f"| {name} | {solver} | {budget} | {fun:.2e} | {err:.2e} | "
                        f"{nfev} | {seconds:.1f} |",
                        flush=True,
                    )
                continue
            for budget in args.budgets:
                if solver == "scipy-bfgs":
                    row = run_scipy(problem, name, budget)
                else:
                    row = run_nnxopt(problem, name, solver, budget)
                fun, err, nfev, seconds = row
                print(
                    f"| {name} | {solver} | {budget} | {fun:.2e} | {err:.2e} | "
                    f"{nfev} | {seconds:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
