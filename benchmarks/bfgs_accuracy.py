"""Same-budget accuracy: L-BFGS against dense BFGS and its self-scaled variants.

The 1-D Poisson PINN of ``nnxopt.problems.pinn_poisson_1d`` (tanh network
1-20-20-1, 481 parameters, 40 collocation points, float64), the 2-D one of
``pinn_poisson_2d`` (2-20-20-1, 501 parameters, 8 x 8 interior points), the
``sin`` regression of ``mlp_regression`` (1-32-1, 97 parameters) and the
Burgers PINN below, solved from the same start until each solver has spent a
budget of value-and-gradient evaluations. nnxopt: ``nnxopt.minimize`` with
``maxfev = maxiter = budget`` and ``gtol = ftol = 0`` (only the budget or a
failed line search stops it), resumed with ``state=`` from one budget to the
next (bit for bit the same trajectory as one solve). Peers: optimistix ``BFGS``
(its defaults; ``rtol = atol = 0``), stepped in a compiled loop and counted one
evaluation per step (each step evaluates the loss once and its gradient when
the step is accepted); scipy ``BFGS`` on the flattened float64 parameters with
a jitted ``jax.value_and_grad`` (one call = one evaluation), which cannot
resume: it solves afresh to the largest budget of a pass and keeps the last
iterate reached within each budget. Reported per budget: the loss at the
iterate reached and, for the PINNs, the relative L2 error of ``u`` against
the exact solution (``sin(pi x)`` on 201 points; 2-D ``sin(pi x) sin(pi y)``
on 21 x 21; Burgers: the Cole–Hopf ``burgers_solution`` on 201 x 21 points of
``[-1, 1] x [0, 1]``), and the seconds the solver has spent so far
(compilation included).

``burgers``: ``pinn_burgers_1d(width=20, depth=2, num_x=64, num_t=32,
cluster=4)``: 501 parameters, nu = 0.01/pi, 2048 interior points with ``x``
clustered toward the shock (spacing 0.0045 at ``x = 0``); ``burgers-coarse``:
the default 32 x 16 uniform grid, which does not resolve the shock.

    python -m benchmarks.bfgs_accuracy [--budgets 2000 5000] [--problems pinn1d pinn2d sin]
    python -m benchmarks.bfgs_accuracy --problems pinn1d burgers \
        --budgets 2000 5000 20000        # every solver to 2k and 5k first
    python -m benchmarks.bfgs_accuracy --cost 1000 4000   # ms per update
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
    if name == "burgers":  # resolving grid: 64 x 32, x clustered toward the shock
        return P.pinn_burgers_1d(
            width=20, depth=2, num_x=64, num_t=32, cluster=4.0, dtype=jnp.float64
        )
    if name == "burgers-coarse":  # the factory's cheap default grid (32 x 16)
        return P.pinn_burgers_1d(width=20, depth=2, dtype=jnp.float64)
    raise SystemExit(
        f"unknown problem {name!r}; known: pinn1d, pinn2d, sin, burgers, burgers-coarse"
    )


@functools.cache
def burgers_reference() -> tuple[jax.Array, np.ndarray]:
    """Points ``(x, t)`` (201 x 21 on ``[-1, 1] x [0, 1]``) and the exact ``u``."""
    gx, gt = np.meshgrid(np.linspace(-1.0, 1.0, 201), np.linspace(0.0, 1.0, 21))
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
    elif name.startswith("burgers"):
        xt, exact = burgers_reference()
        u = model(xt)[:, 0]
    else:
        return math.nan
    return float(jnp.linalg.norm(u - exact) / jnp.linalg.norm(exact))


class Checkpoints:
    """One solve of one problem, advanced budget by budget (each call resumes).

    ``advance(budget)`` runs the solver on until it has spent ``budget``
    value-and-gradient evaluations in all and returns the flat float64
    parameters it stands at and its evaluation count.
    """

    def __init__(self, problem: P.NNXProblem, solver: str):
        self.problem, self.solver = problem, solver
        self.model = problem.make_model()
        self.graphdef, params, self.rest = nnx.split(self.model, nnx.Param, ...)
        self.flat, self.unravel = jax.flatten_util.ravel_pytree(params)
        self.problem_x0 = np.asarray(self.flat, np.float64)
        self.loss_jit = jax.jit(self.loss)
        self.value_and_grad = jax.jit(jax.value_and_grad(self.loss))
        self.nfev, self.seconds = 0, 0.0
        self.budgets: list[int] = []
        self.snapshots: dict[int, tuple[jax.Array, int]] = {}
        if solver in SOLVERS:
            self.tx, self.state = SOLVERS[solver](), None
        elif solver == "optimistix-bfgs":
            self._optimistix_init()
        elif solver != "scipy-bfgs":
            raise SystemExit(f"unknown solver {solver!r}")

    def loss(self, flat: jax.Array) -> jax.Array:
        model = nnx.merge(self.graphdef, self.unravel(flat), self.rest)
        return self.problem.loss_fn(model, *self.problem.batch)

    def advance(self, budget: int, upto: int) -> tuple[jax.Array, int]:
        """``upto``: scipy (which cannot resume) solves afresh to ``upto`` and
        keeps its iterates at every budget of ``self.budgets`` on the way."""
        start = time.perf_counter()
        if self.solver in SOLVERS:
            result = nnxopt.minimize(
                self.problem.loss_fn,
                self.model,
                *self.problem.batch,
                tx=self.tx,
                maxiter=budget,
                maxfev=budget,
                gtol=0.0,
                ftol=0.0,
                state=self.state,
            )  # the model is left at the best accepted iterate
            self.state, self.nfev = result.state, int(result.nfev)
            _, params, _ = nnx.split(self.model, nnx.Param, ...)
            self.flat = jax.flatten_util.ravel_pytree(params)[0]
        elif self.solver == "optimistix-bfgs":
            self.flat, self.opt_state = jax.block_until_ready(
                self._optimistix_steps(self.flat, self.opt_state, budget - self.nfev)
            )
            self.nfev = budget
        else:
            if budget not in self.snapshots:
                self._scipy(upto)
            self.flat, self.nfev = self.snapshots[budget]
        self.seconds += time.perf_counter() - start
        return self.flat, self.nfev

    def _optimistix_init(self) -> None:
        """optimistix ``BFGS`` (its defaults: Armijo backtracking) stepped in a
        compiled loop; every step evaluates the loss once (``jax.linearize``) and
        its gradient when the step is accepted, so one step is counted as one
        evaluation. ``rtol = atol = 0``: only the budget stops it."""
        import optimistix as optx

        solver = optx.BFGS(rtol=0.0, atol=0.0)

        def fn(flat, args):
            return self.loss(flat), None

        f_struct = jax.ShapeDtypeStruct((), self.flat.dtype)
        self.opt_state = solver.init(
            fn, self.flat, None, {}, f_struct, None, frozenset()
        )

        @jax.jit
        def steps(flat, state, n):
            def body(i, carry):
                flat, state = carry
                flat, state, _ = solver.step(fn, flat, None, {}, state, frozenset())
                return flat, state

            return jax.lax.fori_loop(0, n, body, (flat, state))

        self._optimistix_steps = steps

    def _scipy(self, upto: int) -> None:
        """scipy ``BFGS`` on float64 flat parameters (value and gradient from
        one jitted ``jax.value_and_grad``; each call is one evaluation), from the
        start, stopped by its callback once it has spent ``upto``; the iterate
        kept for a budget is the last one reached within it."""
        value_and_grad = self.value_and_grad
        count = {"n": 0}
        last = {"x": np.asarray(self.problem_x0), "n": 0}
        pending = sorted(b for b in self.budgets if b <= upto)

        def fun(x):
            count["n"] += 1
            f, g = value_and_grad(jnp.asarray(x))
            return float(f), np.asarray(g, np.float64)

        def stop(intermediate_result):
            while pending and count["n"] > pending[0]:
                self.snapshots[pending.pop(0)] = (jnp.asarray(last["x"]), last["n"])
            last["x"], last["n"] = np.copy(intermediate_result.x), count["n"]
            if count["n"] >= upto:
                raise StopIteration

        scipy.optimize.minimize(
            fun, np.asarray(self.problem_x0), jac=True, method="BFGS",
            callback=stop, options={"gtol": 0.0, "maxiter": upto},
        )  # fmt: skip
        for budget in pending:  # stopped at or before this budget
            self.snapshots[budget] = (jnp.asarray(last["x"]), last["n"])


def l2_of_flat(run: Checkpoints, name: str, flat: jax.Array) -> float:
    model = nnx.merge(run.graphdef, run.unravel(flat), run.rest)
    return l2_error(name, model)


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
    parser.add_argument(
        "--solvers", nargs="+",
        default=["lbfgs", "bfgs", "ssbfgs", "ssbroyden", "optimistix-bfgs", "scipy-bfgs"],
        help=f"any of {', '.join(SOLVERS)}, optimistix-bfgs, scipy-bfgs",
    )  # fmt: skip
    parser.add_argument(
        "--cost", type=int, nargs="*", default=None,
        help="instead: time one update at these sizes n (fixed step)",
    )  # fmt: skip
    parser.add_argument(
        "--first-pass", type=int, default=5000,
        help="every solver reaches the budgets up to this one before any goes "
        "further (so a cut-short run still has them)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.cost is not None:
        for n in args.cost:
            for solver in ("lbfgs", "bfgs"):
                ms = cost_per_iteration(n, solver)
                print(f"n = {n}: {solver} {ms:.2f} ms per update", flush=True)
        return
    solvers = list(args.solvers)
    if "optimistix-bfgs" in solvers:
        try:
            import optimistix  # noqa: F401
        except ImportError:
            print("optimistix not installed: its BFGS peer is skipped.")
            solvers.remove("optimistix-bfgs")
    print("| problem | solver | budget | loss | rel. L2 error | nfev | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    budgets = sorted(args.budgets)
    first = [b for b in budgets if b <= args.first_pass]
    runs = {}
    for name in args.problems:
        problem = make_problem(name)
        runs[name] = [Checkpoints(problem, solver) for solver in solvers]
    for budget in budgets:  # every problem and solver to one budget, then on
        upto = max(first) if budget in first else budget
        for name, problem_runs in runs.items():
            for run in problem_runs:
                run.budgets = budgets
                flat, nfev = run.advance(budget, upto)
                loss = float(run.loss_jit(flat))
                err = l2_of_flat(run, name, flat)
                print(
                    f"| {name} | {run.solver} | {budget} | {loss:.2e} | {err:.2e} | "
                    f"{nfev} | {run.seconds:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
