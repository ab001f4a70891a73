#!/usr/bin/env python3
"""One entry point that sets itself up: ``python3 run.py demo|test|bench``.

Needs only Python 3.11+. On first use it creates ``.venv`` beside this file and
installs nnxopt with its development extras there; later runs reuse it (the
install is redone when ``pyproject.toml`` changes).

    python3 run.py demo          # train the built-in PINN: Adam, then L-BFGS
    python3 run.py test          # lint, type check and the test suite
    python3 run.py bench --quick # the benchmarks (installs the bench extra)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def _ensure_env(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"run.py: Python 3.11+ is needed, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"run.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{extras}-{digest}"
    if stamp.exists():
        return
    print(f"run.py: installing nnxopt[{extras}] into {VENV}", flush=True)
    subprocess.run(
        [
            str(PY),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-e",
            f"{ROOT}[{extras}]",
        ],
        check=True,
    )
    stamp.touch()


def _run(*cmd: str) -> int:
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    # One BLAS thread: on small machines OpenBLAS threads spin against each other
    # and make scipy (the tests' reference) up to 20x slower.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench"}:
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    if job == "demo":
        _ensure_env("dev")
        return _run(str(PY), "-m", "nnxopt", "demo", *rest)
    if job == "bench":
        _ensure_env("dev,bench")
        return _run(str(PY), "-m", "nnxopt", "bench", *rest)
    _ensure_env("dev")
    for cmd in (
        (str(PY), "-m", "ruff", "check", "src", "tests", "benchmarks", "examples"),
        (
            str(PY),
            "-m",
            "ruff",
            "format",
            "--check",
            "src",
            "tests",
            "benchmarks",
            "examples",
        ),
        (str(PY), "-m", "mypy", "src"),
    ):
        if code := _run(*cmd):
            return code
    return _run(str(PY), "-m", "pytest", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
