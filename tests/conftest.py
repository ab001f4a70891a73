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
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jaxlib


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
