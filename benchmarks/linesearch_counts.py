"""Evaluations of each nnxopt line search, float64 and float32, against scipy.

For each problem: scipy L-BFGS-B in float64 (jitted JAX value and gradient),
then ``nnxopt.minimize`` with ``nnxopt.lbfgs(linesearch=...)`` for each search,
in float64 and in float32 (float32 solves run with 64-bit JAX types disabled, so
the loss's own constants are float32 too). Reported: loss evaluations until the loss first
reaches the target ``f_scipy + tau * (f0 - f_scipy)`` (``tau`` = 1e-6), where
``f_scipy`` is scipy's float64 result (``-``: never reached within 1000
iterations), and the geometric mean of the ratio to scipy over the problems
every solver reached.

    python -m benchmarks.linesearch_counts [--problems rosenbrock beale ...]
        [--searches more_thuente ...] [--dtypes f64 f32]
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from flax import nnx  # noqa: E402

import nnxopt  # noqa: E402
from nnxopt import problems as P  # noqa: E402

SEARCHES = ("more_thuente", "zoom", "hager_zhang", "backtracking")
DEFAULT = (
    "rosenbrock",
    "freudenstein_roth",
    "beale",
    "helical_valley",
    "bard",
    "box_3d",
    "powell_singular",
    "wood",
    "biggs_exp6",
    "watson6",
    "extended_rosenbrock100",
    "penalty1_10",
    "variably_dimensioned10",
    "trigonometric10",
)
TAU = 1e-6
MAXITER = 1000


class Flat(nnx.Module):
    def __init__(self, x):
        self.x = nnx.Param(x)


def _problems(names):
    mgh = {p.name: p for p in P.mgh_problems()}
    out = []
    for name in names:
        if name in mgh:
            out.append((name, mgh[name].fn, mgh[name].x0))
        else:
            print(f"skipped {name}: not in nnxopt.problems")
    for name, make in (("mlp", P.mlp_regression), ("pinn1d", P.pinn_poisson_1d)):
        fn, x0 = P.nnx_flat(make(dtype=jnp.float64))
        out.append((name, fn, np.asarray(x0, np.float64)))
    return out


def _to_target(values, nfev, target):
    hit = np.nonzero(np.asarray(values) <= target)[0]
    return int(np.asarray(nfev)[hit[0]]) if hit.size else None


def _scipy(fn, x0):
    vg = jax.jit(jax.value_and_grad(fn))
    seen = []

    def fun(x):
        v, g = vg(jnp.asarray(x))
        seen.append(float(v))
        return float(v), np.asarray(g, np.float64)

    res = scipy.optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        options=dict(maxcor=10, gtol=1e-8, ftol=1e-12, maxiter=MAXITER),
    )
    return float(res.fun), np.minimum.accumulate(seen)


def _nnxopt(fn, x0, search, dtype):
    model = Flat(jnp.asarray(x0, dtype))
    tx = nnxopt.lbfgs(linesearch=getattr(nnxopt.linesearch, search)())
    res = nnxopt.minimize(
        lambda m: fn(m.x[...]), model, tx=tx, gtol=1e-8, ftol=0.0, maxiter=MAXITER
    )
    h = res.history.trim()
    return h.value.astype(np.float64), h.nfev, res.status.name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=list(DEFAULT))
    ap.add_argument("--searches", nargs="+", default=list(SEARCHES))
    ap.add_argument("--dtypes", nargs="+", default=["f64", "f32"])
    args = ap.parse_args(argv)
    dtypes = [
        d for name, d in (("f64", jnp.float64), ("f32", jnp.float32))
        if name in args.dtypes
    ]  # fmt: skip
    cols = [
        f"{s} {'f64' if d == jnp.float64 else 'f32'}"
        for d in dtypes
        for s in args.searches
    ]
    print("| problem | n | scipy f64 | " + " | ".join(cols) + " |")
    print("|---|---:|---:|" + "---:|" * len(cols))
    ratios: dict[str, list[float]] = {c: [] for c in cols}
    for name, fn, x0 in _problems(args.problems):
        f_ref, best = _scipy(fn, x0)
        f0 = float(fn(jnp.asarray(x0)))
        target = f_ref + TAU * (f0 - f_ref)
        ref = _to_target(best, np.arange(1, len(best) + 1), target)
        cells = []
        for dtype in dtypes:
            for search in args.searches:
                if dtype == jnp.float32:  # float32 arithmetic throughout,
                    with jax.enable_x64(False):  # constants of the loss included
                        values, nfev, _ = _nnxopt(fn, x0, search, dtype)
                else:
                    values, nfev, _ = _nnxopt(fn, x0, search, dtype)
                n = _to_target(values, nfev, target)
                cells.append("-" if n is None else str(n))
                col = f"{search} {'f64' if dtype == jnp.float64 else 'f32'}"
                if n is not None and ref:
                    ratios[col].append(n / ref)
        print(f"| {name} | {len(x0)} | {ref} | " + " | ".join(cells) + " |", flush=True)
    print(
        "| geo-mean ratio to scipy (reached only) | | 1.00 | "
        + " | ".join(
            f"{math.exp(np.mean(np.log(r))):.2f} ({len(r)})" if r else "-"
            for r in ratios.values()
        )
        + " |"
    )


if __name__ == "__main__":
    main()
