"""Side-by-side L-BFGS benchmarks: ``python -m benchmarks`` (or ``nnxopt bench``).

Runs nnxopt and its peers (scipy, torch, optax, ``nnx.Optimizer``, jaxopt,
optimistix) on the known-minimum problems of ``nnxopt.problems`` and prints
markdown tables; writes ``results.json``, ``results.md`` and ``profile.png``.
See BENCHMARKS.md.
"""

from __future__ import annotations

import os

# One BLAS thread: on a small shared machine OpenBLAS threads spin and make
# scipy's L-BFGS-B 20x slower. Set before numpy is imported by the runner.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks with command-line ``argv``; return the exit status."""
    from benchmarks._runner import main as _main

    return _main(argv)
