#!/usr/bin/env python3
"""One entry point that sets itself up: ``python3 run.py demo|test|bench|lock``.

Needs only Python 3.11+. On first use it creates ``.venv`` beside this file and
installs there the development environment pinned, with hashes, in
``requirements/dev.txt``, then nnxopt itself (editable, no dependencies); later
runs reuse it (the install is redone when ``pyproject.toml`` or the lock file
changes).

    python3 run.py demo          # train the built-in PINN: Adam, then L-BFGS
    python3 run.py test          # lint, type check and the test suite
    python3 run.py test -m slow  # the long tests (any pytest arguments pass on)
    python3 run.py bench --quick # the benchmarks (adds the bench extra)
    python3 run.py lock          # refresh requirements/dev.txt (newest versions)
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


LOCK = ROOT / "requirements" / "dev.txt"
#: uv resolves the lock file (``run.py lock``); pinned so that a refresh is
#: reproducible too.
UV = "uv==0.13.9"


def _pip(*args: str) -> None:
    subprocess.run(
        [str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        check=True,
    )


def _ensure_env(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"run.py: Python 3.11+ is needed, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"run.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + LOCK.read_bytes()
    ).hexdigest()[:16]
    stamp = VENV / f".installed-{extras}-{digest}"
    if stamp.exists():
        return
    print(f"run.py: installing {LOCK.relative_to(ROOT)} into {VENV}", flush=True)
    # Every package of the development environment at its locked version and
    # hash; then nnxopt itself, editable, built by the locked hatchling.
    _pip("--require-hashes", "--no-deps", "-r", str(LOCK))
    _pip("--no-deps", "--no-build-isolation", "-e", str(ROOT))
    if extras != "dev":
        # The benchmark peers (torch, jaxopt, optimistix) are not locked: torch's
        # CPU build differs from PyPI's default wheel; pip keeps the locked rest.
        print(f"run.py: installing nnxopt[{extras}]", flush=True)
        _pip("-e", f"{ROOT}[{extras}]")
    stamp.touch()


def _lock() -> int:
    """Re-resolve ``requirements/dev.txt``: newest versions, every platform."""
    _ensure_env("dev")
    _pip(UV)
    return _run(
        str(PY), "-m", "uv", "pip", "compile", "pyproject.toml",
        "--extra", "dev", "--universal", "--fork-strategy", "fewest",
        "--python-version", "3.11", "--generate-hashes", "--upgrade",
        "-o", str(LOCK.relative_to(ROOT)),
    )  # fmt: skip


def _run(*cmd: str, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ, **(env or {}))
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    # One BLAS thread: on small machines OpenBLAS threads spin against each other
    # and make scipy (the tests' reference) up to 20x slower.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


#: The guard against results that hold on one CPU only: the tests that compare
#: with third-party references (marker ``reference``) once more with XLA held
#: to SSE4.2, the oldest x86-64 instruction set JAX supports, as CI's or a
#: user's CPU may be.
ISA_GUARD = "--xla_cpu_multi_thread_eigen=false --xla_cpu_max_isa=SSE4_2"


def _test(rest: list[str]) -> int:
    _ensure_env("dev")
    dirs = ("src", "tests", "benchmarks", "examples")
    for cmd in (
        (str(PY), "-m", "ruff", "check", *dirs),
        (str(PY), "-m", "ruff", "format", "--check", *dirs),
        (str(PY), "-m", "mypy", "src"),
    ):
        if code := _run(*cmd):
            return code
    if code := _run(str(PY), "-m", "pytest", *rest):
        return code
    if rest:  # a chosen subset: no guard
        return 0
    print(f"run.py: reference tests again under XLA_FLAGS={ISA_GUARD!r}", flush=True)
    return _run(
        str(PY), "-m", "pytest", "-m", "reference", "--durations=0", "-q",
        env={"XLA_FLAGS": ISA_GUARD},
    )  # fmt: skip


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench", "lock"}:
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    if job == "demo":
        _ensure_env("dev")
        return _run(str(PY), "-m", "nnxopt", "demo", *rest)
    if job == "lock":
        return _lock()
    if job == "bench":
        _ensure_env("dev,bench")
        return _run(str(PY), "-m", "nnxopt", "bench", *rest)
    return _test(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
