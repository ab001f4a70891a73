#!/usr/bin/env python3
"""One entry point that sets itself up: ``python3 run.py demo|test|bench|lock``.

Needs only Python 3.11+. On first use it creates ``.venv`` beside this file and
installs there the development environment pinned, with hashes, in
``requirements/dev.txt`` (``requirements/lowest.txt`` and ``.venv-lowest`` for
``test-lowest``), then nnxopt itself (editable, no dependencies); later
runs reuse it (the install is redone when ``pyproject.toml`` or the lock file
changes).

    python3 run.py demo          # train the built-in PINN: Adam, then L-BFGS
    python3 run.py test          # lint, type check and the test suite
    python3 run.py docs          # run the examples, build the site into site/
    python3 run.py test -m slow  # the long tests (any pytest arguments pass on)
    python3 run.py bench --quick # the benchmarks (adds the bench extra)
    python3 run.py test-lowest   # the same against the oldest jax/flax/optax
    python3 run.py lock          # refresh the lock files (newest versions)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = ROOT / "requirements"
#: uv resolves the lock files (``run.py lock``); pinned so that a refresh is
#: reproducible too.
UV = "uv==0.13.9"
#: The oldest jax, flax and optax that ``pyproject.toml`` admits, which
#: ``run.py test-lowest`` tests against (the rest of the environment locked).
LOWEST = ("jax==0.10.0", "jaxlib==0.10.0", "flax==0.12.8", "optax==0.2.6")


@dataclasses.dataclass(frozen=True)
class Env:
    """A virtual environment and the lock file it is installed from."""

    venv: Path
    lock: Path

    @property
    def python(self) -> Path:
        bin_dir = self.venv / ("Scripts" if os.name == "nt" else "bin")
        return bin_dir / ("python.exe" if os.name == "nt" else "python")


DEV = Env(ROOT / ".venv", REQUIREMENTS / "dev.txt")
LOWEST_ENV = Env(ROOT / ".venv-lowest", REQUIREMENTS / "lowest.txt")
PY = DEV.python


def _pip(env: Env, *args: str) -> None:
    subprocess.run(
        [str(env.python), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", *args],
        check=True,
    )  # fmt: skip


def _ensure_env(extras: str, env: Env = DEV) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"run.py: Python 3.11+ is needed, this is {sys.version.split()[0]}")
    if not env.python.exists():
        print(f"run.py: creating {env.venv}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env.venv)
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + env.lock.read_bytes()
    ).hexdigest()[:16]
    stamp = env.venv / f".installed-{extras}-{digest}"
    if stamp.exists():
        return
    print(
        f"run.py: installing {env.lock.relative_to(ROOT)} into {env.venv}", flush=True
    )
    # Every package of the development environment at its locked version and
    # hash; then nnxopt itself, editable, built by the locked hatchling.
    _pip(env, "--require-hashes", "--no-deps", "-r", str(env.lock))
    _pip(env, "--no-deps", "--no-build-isolation", "-e", str(ROOT))
    if extras != "dev":
        # The benchmark peers (torch, jaxopt, optimistix) are not locked: torch's
        # CPU build differs from PyPI's default wheel; pip keeps the locked rest.
        print(f"run.py: installing nnxopt[{extras}]", flush=True)
        _pip(env, "-e", f"{ROOT}[{extras}]")
    stamp.touch()


def _lock() -> int:
    """Re-resolve the lock files: newest versions, every platform; and lowest."""
    _ensure_env("dev")
    _pip(DEV, UV)
    compile_ = (
        str(PY), "-m", "uv", "pip", "compile", "pyproject.toml", "--extra", "dev",
        "--generate-hashes", "--python-version", "3.11",
    )  # fmt: skip
    if code := _run(
        *compile_, "--universal", "--fork-strategy", "fewest", "--upgrade",
        "-o", str(DEV.lock.relative_to(ROOT)),
    ):  # fmt: skip
        return code
    # The lowest supported jax/flax/optax, the rest resolved for Python 3.11.
    pins = REQUIREMENTS / "lowest.in"
    pins.write_text("\n".join(LOWEST) + "\n")
    return _run(
        *compile_, "--upgrade", "--override", str(pins.relative_to(ROOT)),
        "-o", str(LOWEST_ENV.lock.relative_to(ROOT)),
    )  # fmt: skip


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, **(extra or {}))
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    # One BLAS thread: on small machines OpenBLAS threads spin against each other
    # and make scipy (the tests' reference) up to 20x slower.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("NO_MKDOCS_2_WARNING", "1")  # Material's banner, every build
    return env


def _run(*cmd: str, env: dict[str, str] | None = None) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=_env(env)).returncode


#: The guard against results that hold on one CPU only: the tests that compare
#: with third-party references (marker ``reference``) once more with XLA held
#: to SSE4.2, the oldest x86-64 instruction set JAX supports, as CI's or a
#: user's CPU may be.
ISA_GUARD = "--xla_cpu_multi_thread_eigen=false --xla_cpu_max_isa=SSE4_2"


def _test(rest: list[str], env: Env = DEV) -> int:
    _ensure_env("dev", env)
    py = str(env.python)
    dirs = ("src", "tests", "benchmarks", "examples",
            "docs/_hooks.py", "docs/_griffe_rst.py", "docs/conftest.py")  # fmt: skip
    for cmd in (
        (py, "-m", "ruff", "check", *dirs),
        (py, "-m", "ruff", "format", "--check", *dirs),
        (py, "-m", "mypy", "src"),
    ):
        if code := _run(*cmd):
            return code
    if code := _run(py, "-m", "pytest", *rest):
        return code
    if rest:  # a chosen subset: no guard
        return 0
    print(f"run.py: reference tests again under XLA_FLAGS={ISA_GUARD!r}", flush=True)
    # The two files whose tests compare iteration and evaluation counts with
    # scipy (the rest of the reference tests compare values with tolerances).
    return _run(
        py, "-m", "pytest", "-m", "reference", "--durations=5", "-q",
        "tests/test_problems.py", "tests/test_library.py",
        env={"XLA_FLAGS": ISA_GUARD},
    )  # fmt: skip


def _run_example(script: Path) -> int:
    """Run one example in ``build/gallery/<name>/``, its output in ``output.txt``."""
    out = ROOT / "build" / "gallery" / script.stem
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with open(out / "output.txt", "w") as log, open(out / "stderr.txt", "w") as err:
        code = subprocess.run(
            [str(PY), str(script)], cwd=out, stdout=log, stderr=err, env=_env()
        ).returncode
    status = "ok" if code == 0 else f"FAILED (exit {code}), see {out / 'stderr.txt'}"
    print(f"run.py: examples/{script.name}: {status}", flush=True)
    return code


def _docs(rest: list[str]) -> int:
    """Execute every example into ``build/gallery/``, then build the site strictly.

    Each script runs in its own folder there, one per core at a time (the plots
    it writes land beside its printed output, ``output.txt``), which the site's
    hooks (``docs/_hooks.py``) embed in its gallery page. ``mkdocs.yml`` sets
    ``strict``: a warning (a broken link, a missing reference) fails the build.
    """
    _ensure_env("dev")
    scripts = sorted((ROOT / "examples").glob("*.py"))
    print(f"run.py: running {len(scripts)} examples into build/gallery/", flush=True)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        if code := max(pool.map(_run_example, scripts), default=0):
            return code
    return _run(str(PY), "-m", "mkdocs", "build", "--strict", *rest)


def main(argv: list[str]) -> int:
    jobs = {"demo", "test", "test-lowest", "bench", "lock", "docs"}
    if not argv or argv[0] not in jobs:
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
    if job == "docs":
        return _docs(rest)
    if job == "test-lowest":
        return _test(rest, LOWEST_ENV)
    return _test(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
