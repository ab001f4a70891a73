"""Shared test set-up: float64 available everywhere, CPU only, compiled once.

float64 is switched on for the whole session (scipy references are float64);
float32 tests create their arrays and modules with explicit dtypes.

JAX's persistent compilation cache keeps compiled programs between runs, in a
folder keyed by everything that can change the machine code: jax and jaxlib
versions, ``XLA_FLAGS`` (``--xla_cpu_max_isa`` included) and the CPU's model
and instruction-set flags. XLA's own key adds the program and its options, so a
cached program is the one the compiler would produce here and now: the cache
saves compile time and cannot change a result. ``NNXOPT_TEST_CACHE=0`` turns it
off; ``NNXOPT_TEST_CACHE=/path`` moves it.

The suite is bound by XLA's compile time (hundreds of small programs, each a
loop with a line search, run for milliseconds), so the tests ask XLA for a
cheaper compile: the classic fusion emitters instead of the MLIR ones and no
LLVM optimisation (``FAST_COMPILE`` below, appended to any ``XLA_FLAGS`` the
caller set, ``--xla_cpu_max_isa`` included). That cut the suite's pytest time
from 648 to 265 s on 2 cores. Both produce IEEE arithmetic; they can round a
fused expression differently from XLA's defaults (at most a few ulps), which
is why no test compares two separately compiled programs bit for bit.
``NNXOPT_TEST_FAST_COMPILE=0`` compiles as users do (the suite passes either
way; run it so before a release).
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

FAST_COMPILE = (
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_backend_optimization_level=0",
)
if os.environ.get("NNXOPT_TEST_FAST_COMPILE", "1") != "0":
    # Set before JAX creates its CPU client (which reads XLA_FLAGS once); the
    # processes the tests start inherit it.
    _flags = os.environ.get("XLA_FLAGS", "").split()
    _names = {flag.split("=")[0] for flag in _flags}
    _flags += [f for f in FAST_COMPILE if f.split("=")[0] not in _names]
    os.environ["XLA_FLAGS"] = " ".join(_flags)

import jax  # noqa: E402  (after XLA_FLAGS is set)
import jaxlib  # noqa: E402


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(("model name", "flags", "Features", "CPU part"))
    ]
    return "\n".join(sorted(set(lines)))


def _cache_dir() -> Path | None:
    setting = os.environ.get("NNXOPT_TEST_CACHE", "")
    if setting == "0":
        return None
    root = Path(setting) if setting else Path.home() / ".cache" / "nnxopt-tests"
    key = "\n".join(
        (
            jax.__version__,
            jaxlib.__version__,
            os.environ.get("XLA_FLAGS", ""),
            _cpu_signature(),
        )
    )
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


jax.config.update("jax_enable_x64", True)
if (_dir := _cache_dir()) is not None:
    _dir.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(_dir))
    # Cache every program: the tests compile hundreds of small ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Not a doctest module (``--doctest-modules``): its module name, conftest, is
# also docs/conftest.py's, and pytest would import one for the other.
collect_ignore = ["conftest.py"]
