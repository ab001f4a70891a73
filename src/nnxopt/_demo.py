"""``nnxopt demo``: a 1-D Poisson PINN trained with Adam, then L-BFGS.

Solves ``-u''(x) = pi^2 sin(pi x)`` on ``[0, 1]`` with ``u(0) = u(1) = 0``
(exact solution ``sin(pi x)``) with a tiny tanh network: a few hundred Adam
steps, then :func:`nnxopt.minimize` with the default L-BFGS, each phase one
compiled on-device loop. Prints a table and writes a convergence plot.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ._bfgs import bfgs
from ._handoff import adam_then_lbfgs
from ._lbfgs import lbfgs
from ._minimize import MinimizeResult, minimize


class PINN(nnx.Module):
    """``x -> tanh(W1 x) -> tanh(W2 .) -> W3 .``, a scalar function of ``x``."""

    def __init__(self, width: int, dtype: Any, rngs: nnx.Rngs):
        kw = dict(param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.l1 = nnx.Linear(1, width, **kw)
        self.l2 = nnx.Linear(width, width, **kw)
        self.l3 = nnx.Linear(width, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l3(jnp.tanh(self.l2(jnp.tanh(self.l1(x)))))


def pinn_loss(model: PINN, xs: jax.Array, xb: jax.Array) -> jax.Array:
    """Mean squared PDE residual at ``xs`` plus squared boundary values at ``xb``."""

    def u(x):
        return model(x[None, None])[0, 0]

    d2u = jax.vmap(jax.grad(jax.grad(u)))(xs)
    residual = -d2u - math.pi**2 * jnp.sin(math.pi * xs)
    return jnp.mean(residual**2) + jnp.mean(jax.vmap(u)(xb) ** 2)


def relative_l2_error(model: PINN, dtype: Any) -> float:
    """``||u - sin(pi x)|| / ||sin(pi x)||`` on 201 test points."""
    x = jnp.linspace(0.0, 1.0, 201, dtype=dtype)[:, None]
    exact = jnp.sin(math.pi * x)
    return float(jnp.linalg.norm(model(x) - exact) / jnp.linalg.norm(exact))


# --solver: (row label, transform factory) of the second phase.
_SOLVERS: dict[str, tuple[str, Callable[[], Any]]] = {
    "lbfgs": ("L-BFGS", lbfgs),
    "bfgs": ("BFGS", bfgs),
    "ssbfgs": ("SSBFGS", lambda: bfgs(self_scaling=True)),
    "ssbroyden": ("SSBroyden", lambda: bfgs(self_scaling=True, broyden_phi=None)),
}


def _solver_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in _SOLVERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown solver {', '.join(unknown)!s}; choose from "
            f"{', '.join(sorted(_SOLVERS))} (comma-separated)"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    """The command line of ``nnxopt demo``."""
    parser = argparse.ArgumentParser(
        prog="nnxopt demo",
        description=(
            "Train a 1-D Poisson PINN with Adam, then L-BFGS or a --solver "
            "(nnxopt.minimize)."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a few-second run")
    parser.add_argument("--float64", action="store_true", help="use float64")
    parser.add_argument("--adam-steps", type=int, default=None)
    parser.add_argument(
        "--lbfgs-steps", type=int, default=None, help="second-phase iterations"
    )
    parser.add_argument(
        "--solver",
        type=_solver_list,
        default=["lbfgs"],
        metavar="{" + ",".join(sorted(_SOLVERS)) + "}[,...]",
        help="second phase: nnxopt.lbfgs (default), nnxopt.bfgs, or its "
        "self-scaled BFGS / Broyden variants (docs/choosing_a_solver.md); "
        "several, comma-separated, each start from the point Adam reached",
    )
    parser.add_argument("--out", default="nnxopt_demo.png", help="plot path")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo with command-line ``argv``; return the table rows."""
    args = _parser().parse_args(argv)

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.float64 else jnp.float32
    adam_steps = args.adam_steps or (50 if args.quick else 500)
    lbfgs_steps = args.lbfgs_steps or (50 if args.quick else 2000)
    width, points = (8, 16) if args.quick else (16, 32)
    progress = not args.no_progress and _has_tqdm()

    xs = jnp.linspace(0.0, 1.0, points + 2, dtype=dtype)[1:-1]
    xb = jnp.asarray([0.0, 1.0], dtype=dtype)
    model = PINN(width, dtype, nnx.Rngs(0))
    print(
        f"1-D Poisson PINN, exact u = sin(pi x): {_num_params(model)} parameters, "
        f"{points} collocation points, {jnp.dtype(dtype).name}"
    )
    phases, errors = _train(
        args.solver, model, (xs, xb), dtype, adam_steps, lbfgs_steps, progress
    )
    rows: list[dict[str, Any]] = []
    for (phase, result, seconds), error in zip(phases, errors):
        rows.append(
            dict(
                phase=phase,
                iterations=result.nit,
                evaluations=result.nfev,
                loss=float(result.fun),
                rel_l2=error,
                seconds=seconds,
                status=result.status.name,
            )
        )
    _print_table(rows)
    if not args.no_plot:
        results = [result for _, result, _ in phases]
        path = _plot(results, [str(r["phase"]) for r in rows], args.out)
        if path:
            print(f"convergence plot: {path}")
    return {"rows": rows}


def _train(
    solvers: list[str],
    model: PINN,
    data: tuple[jax.Array, jax.Array],
    dtype: Any,
    adam_steps: int,
    lbfgs_steps: int,
    progress: bool,
) -> tuple[list[tuple[str, MinimizeResult, float]], list[float]]:
    """Adam, then the first of ``solvers`` on ``model``; every other solver
    from a copy of the point Adam reached. Returns the phases ``(label,
    result, seconds)`` and the relative L2 error after each."""
    errors: list[float] = []
    handoff: list[Any] = []

    def between(m: Any, _: MinimizeResult) -> None:
        errors.append(relative_l2_error(m, dtype))
        handoff.append(nnx.clone(m))  # the start of every other --solver

    first, *others = solvers
    out = adam_then_lbfgs(
        pinn_loss,
        model,
        *data,
        adam=optax.adam(1e-2),
        adam_steps=adam_steps,
        tx=_SOLVERS[first][1](),
        maxiter=lbfgs_steps,
        progress=progress,
        between=between,
    )
    errors.append(relative_l2_error(model, dtype))
    phases = [
        ("adam(1e-2)", out.adam, out.adam_seconds),
        (_SOLVERS[first][0], out.lbfgs, out.lbfgs_seconds),
    ]
    for name in others:
        member = nnx.clone(handoff[0])
        start = time.perf_counter()
        result = minimize(
            pinn_loss, member, *data, tx=_SOLVERS[name][1](),
            maxiter=lbfgs_steps, progress=progress,
        )  # fmt: skip
        phases.append((_SOLVERS[name][0], result, time.perf_counter() - start))
        errors.append(relative_l2_error(member, dtype))
    return phases, errors


def _num_params(model: Any) -> int:
    return sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))
    )


def _has_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'phase':<11} {'iters':>6} {'evals':>6} {'loss':>10} {'rel L2':>9} {'seconds':>8}  status"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['phase']:<11} {r['iterations']:>6d} {r['evaluations']:>6d} "
            f"{r['loss']:>10.3e} {r['rel_l2']:>9.2e} {r['seconds']:>8.2f}  {r['status']}"
        )
    print("(seconds include compilation on the first call)")


def _plot(results: list[MinimizeResult], names: list[str], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'nnxopt[plot]'): no plot")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    adam_evals = 0
    for i, (result, name) in enumerate(zip(results, names)):
        hist = result.history.trim()
        ax.semilogy((adam_evals if i else 0) + hist.nfev, hist.value, label=name)
        if i == 0 and len(hist.nfev):
            adam_evals = int(hist.nfev[-1])  # the second phases start here
    ax.set_xlabel("loss evaluations")
    ax.set_ylabel("loss")
    ax.set_title(
        f"1-D Poisson PINN: Adam, then {' / '.join(names[1:])} (nnxopt.minimize)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
