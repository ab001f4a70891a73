"""Data-parallel L-BFGS over 2 processes with ``jax.distributed`` (on one machine).

Run ``python examples/multiprocess.py``: it launches two worker processes on
localhost, each with 2 CPU devices (4 devices in all), which together solve a
ridge regression whose examples are sharded over the 4 devices. Each worker
prints its result; the launcher checks that both are identical and agree with
a single-process solve of the same problem.

On a cluster, run the worker part once per host (``--worker``) under your
launcher (SLURM's ``srun``, a Kubernetes Job): ``jax.distributed.initialize()``
then needs no arguments there. See docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
N, D = 4096, 16
RIDGE = 1e-3


def problem():
    """The data every process can rebuild (a real job reads its own shard)."""
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D))
    y = X @ rng.normal(size=D) + 0.1 * rng.normal(size=N)
    return X, y


def loss(w, X, y):
    import jax.numpy as jnp

    return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * RIDGE * jnp.sum(w**2)


def solve_here(X, y, mesh=None):
    """Solve with the examples sharded over ``mesh`` (all devices of all processes)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import nnxopt

    def place(a, spec):
        if mesh is None:
            return jax.numpy.asarray(a)
        sharding = NamedSharding(mesh, spec)
        # Each process supplies the shards its own devices hold.
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    w0 = place(np.zeros(D), P())
    sol = nnxopt.solve(loss, w0, place(X, P("x", None)), place(y, P("x")), ftol=0.0)

    def local(x):  # a replicated array: any local copy is the value
        return np.asarray(x.addressable_shards[0].data)

    return {
        "w": local(sol.params).tolist(),
        "fun": float(local(sol.fun)),
        "nit": int(local(sol.nit)),
        "status": nnxopt.Status(int(local(sol.status))).name,
    }


def worker(process_id: int, port: int) -> None:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
    )
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=NUM_PROCESSES,
        process_id=process_id,
    )
    mesh = jax.make_mesh((jax.device_count(),), ("x",))
    result = solve_here(*problem(), mesh)
    result["process"] = jax.process_index()
    result["devices"] = jax.device_count()
    print(json.dumps(result), flush=True)
    jax.distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch() -> list[dict]:
    """Start the workers; return their results."""
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(i), "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(NUM_PROCESSES)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            for other in procs:
                other.kill()
            raise RuntimeError(f"worker failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=int, default=None, help="process id")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.port)
        return
    results = launch()
    for r in results:
        print(
            f"process {r['process']} ({r['devices']} devices): {r['status']} "
            f"nit={r['nit']} fun={r['fun']:.12g}"
        )
    import jax

    jax.config.update("jax_enable_x64", True)
    single = solve_here(*problem())
    same = all(r["w"] == results[0]["w"] for r in results)
    gap = max(abs(a - b) for a, b in zip(single["w"], results[0]["w"]))
    print(f"identical in all processes: {same}")
    print(
        f"single process: {single['status']} nit={single['nit']}, max |dw| = {gap:.2e}"
    )


if __name__ == "__main__":
    main()
