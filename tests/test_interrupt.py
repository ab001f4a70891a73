"""Ctrl-C (SIGINT) stops a running solve: a child process gets the signal.

A first SIGINT ends ``minimize`` (progress bar on) and ``solve`` (off) with
status ``INTERRUPTED`` within 2 s, the model at the last accepted iterate and a
state that resumes; a second one raises ``KeyboardInterrupt`` as usual.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The issue's bound on the time from Ctrl-C to the returned result. The loop
#: returns to the host about every 0.25 s (nnxopt._loop.CHUNK_SECONDS).
STOP_SECONDS = 2.0

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
import nnxopt

jax.config.update("jax_enable_x64", True)
a = jax.random.normal(jax.random.key(0), (200, 200), jnp.float64) / 20
big = 2**31 - 1
# adam with gtol=0 runs until maxiter: minutes, unless interrupted.
kw = dict(tx=optax.adam(1e-3), gtol=0.0, maxiter=2_000_000)

class Vector(nnx.Module):
    def __init__(self):
        self.x = nnx.Param(jnp.zeros(200, jnp.float64))

def loss(model, a):
    return jnp.sum((a @ model.x[...] - 1.0) ** 2)

def fun(x, a):
    return jnp.sum((a @ x - 1.0) ** 2)

def say(**fields):
    print(json.dumps(fields), flush=True)

model = Vector()
nnxopt.minimize(loss, model, a, maxfev=3, progress=True, **kw)  # compile
say(ready=1)
r = nnxopt.minimize(loss, model, a, maxfev=big, progress=True, **kw)
at_last = bool(np.array_equal(np.asarray(model.x[...]), np.asarray(r.state.params["x"])))
say(status=r.status.name, success=r.success, nit=r.nit, message=r.message,
    at_last=at_last)
kw["maxiter"] = r.nit + 5
r2 = nnxopt.minimize(loss, model, a, maxfev=big, state=r.state, **kw)
say(status=r2.status.name, nit=r2.nit)

kw["maxiter"] = 2_000_000
nnxopt.solve(fun, jnp.zeros(200), a, maxfev=3, **kw)  # compile
say(ready=2)
sol = nnxopt.solve(fun, jnp.zeros(200), a, maxfev=big, **kw)
say(status=nnxopt.Status(int(sol.status)).name, nit=int(sol.nit))
say(ready=3)
nnxopt.solve(fun, jnp.zeros(200), a, maxfev=big, **kw)
# The second Ctrl-C lands in the solve or, if the first one already ended it,
# here: a KeyboardInterrupt either way.
time.sleep(30)
"""


def _read(lines, timeout=120.0):
    """The child's next JSON line (the first ones wait for compilation)."""
    line = lines.get(timeout=timeout)
    assert line, "the child ended early"
    return json.loads(line)


def _reader(proc):
    """Queue the child's output lines ("" at the end) from a thread."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_stops_solve_and_minimize(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            preexec_fn=_default_sigint,
        )
        try:
            _check(proc, _reader(proc))
        finally:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in (tmp_path / "stderr").read_text()


def _default_sigint():
    # pytest-xdist's workers ignore SIGINT, and an ignored signal stays ignored
    # in a child: give the child a terminal's default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(proc, times=1):
    time.sleep(0.5)  # inside the compiled loop
    start = time.perf_counter()
    for _ in range(times):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    return start


def _check(proc, lines):
    assert _read(lines) == {"ready": 1}
    start = _interrupt(proc)
    out = _read(lines)
    assert time.perf_counter() - start < STOP_SECONDS
    assert out["status"] == "INTERRUPTED" and out["success"] is False
    assert "interrupted" in out["message"] and out["nit"] > 0
    assert out["at_last"]  # the model holds the state's (last accepted) iterate
    resumed = _read(lines)
    assert resumed == {"status": "MAX_ITER", "nit": out["nit"] + 5}

    assert _read(lines) == {"ready": 2}
    start = _interrupt(proc)
    out = _read(lines)
    assert time.perf_counter() - start < STOP_SECONDS
    assert out["status"] == "INTERRUPTED" and out["nit"] > 0

    assert _read(lines) == {"ready": 3}
    start = _interrupt(proc, times=2)
    proc.wait(timeout=30)
    assert time.perf_counter() - start < STOP_SECONDS + 1
    assert proc.returncode != 0
