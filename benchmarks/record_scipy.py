"""Regenerate the scipy references in ``benchmarks/scipy_reference.py``.

Runs ``scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
options=problems.SCIPY_OPTIONS)`` in float64 on every flat problem and on the
NNX problems (float64, default sizes, parameters flattened with
``problems.nnx_flat``), with ``fun`` a jitted ``jax.value_and_grad``, and
rewrites the block between ``# BEGIN GENERATED`` and ``# END GENERATED``.
The logistic-regression minimum is computed at ``gtol=1e-12`` and printed (it
is a property of the problem: ``nnxopt.problems.LOGISTIC_F_STAR``).

Usage::

    JAX_PLATFORMS=cpu python -m benchmarks.record_scipy          # rewrite
    JAX_PLATFORMS=cpu python -m benchmarks.record_scipy --check  # compare only
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import scipy_reference as _ref
from nnxopt import problems


def scipy_reference(fn: Callable[[Any], Any], x0: np.ndarray, options: dict) -> Any:
    """Run scipy L-BFGS-B in float64 on ``fn`` from ``x0``; return a ScipyReference."""
    import jax
    import jax.numpy as jnp
    import scipy.optimize

    value_and_grad = jax.jit(jax.value_and_grad(fn))

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = value_and_grad(jnp.asarray(x, dtype=jnp.float64))
        return float(f), np.asarray(g, dtype=np.float64)

    res = scipy.optimize.minimize(
        fun, np.asarray(x0, np.float64), jac=True, method="L-BFGS-B", options=options
    )
    return _ref.ScipyReference(
        fun=float(res.fun),
        grad_norm=float(np.max(np.abs(res.jac))),
        nit=int(res.nit),
        nfev=int(res.nfev),
        success=bool(res.success),
    )


def compute() -> tuple[dict, dict]:
    """Return ``(logistic_f_star, references)`` freshly computed."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    tight = dict(problems.SCIPY_OPTIONS, gtol=1e-12, ftol=0.0, maxiter=10_000)
    logistic = problems.logistic_regression()
    ref = scipy_reference(logistic.fn, logistic.x0, tight)
    logistic_f_star = {(500, 20, 1): ref.fun}

    refs = {}
    for p in problems.flat_problems():
        refs[p.name] = scipy_reference(p.fn, p.x0, problems.SCIPY_OPTIONS)
    for q in problems.nnx_problems(jnp.float64):
        fn, x0 = problems.nnx_flat(q)
        refs[q.name] = scipy_reference(fn, x0, problems.SCIPY_OPTIONS)
    return logistic_f_star, refs


def render(refs: dict) -> str:
    """Return the generated block (markers included) as Python source."""
    lines = [
        "# BEGIN GENERATED",
        "# by `python -m benchmarks.record_scipy`; do not edit by hand.",
        "# fmt: off",
        "SCIPY_REFERENCE: dict[str, ScipyReference] = {",
    ]
    for name, r in refs.items():
        lines.append(
            f"    {name!r}: ScipyReference({r.fun!r}, {r.grad_norm!r}, ".replace(
                "'", '"'
            )
            + f"{r.nit}, {r.nfev}, {r.success}),"
        )
    lines += ["}", "# fmt: on", "# END GENERATED"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Recompute the references; rewrite ``scipy_reference.py`` unless ``--check``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.record_scipy")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    logistic_f_star, refs = compute()
    block = render(refs)
    print(f"logistic f_star (nnxopt.problems.LOGISTIC_F_STAR): {logistic_f_star}")
    path = Path(_ref.__file__)
    text = path.read_text()
    pattern = re.compile(r"# BEGIN GENERATED\n.*# END GENERATED\n", re.S)
    if not pattern.search(text):
        print(f"{path}: generated block markers not found", file=sys.stderr)
        return 1
    new = pattern.sub(lambda _: block, text)
    for name, r in refs.items():
        print(
            f"{name:28s} f={r.fun:.10e} |g|={r.grad_norm:.1e} nit={r.nit:5d} "
            f"nfev={r.nfev:5d} success={r.success}"
        )
    if args.check:
        same = new == text
        print("references reproduce" if same else "references differ")
        return 0 if same else 1
    path.write_text(new)
    print(f"wrote {len(refs)} references to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
