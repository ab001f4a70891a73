"""Shared test set-up: float64 available everywhere, CPU only.

float64 is switched on for the whole session (scipy references are float64);
float32 tests create their arrays and modules with explicit dtypes.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_enable_x64", True)
