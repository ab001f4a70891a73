"""Save a solve's state with orbax-checkpoint and resume it in a new process.

Run: ``python examples/checkpoint_resume.py [--quick] [--dir DIR]``. The first
process runs 20 iterations of ``nnxopt.minimize`` and saves ``result.state``;
it then starts a second process (this script, ``resume DIR``) that rebuilds the
model, restores the state and continues to 40 iterations, as one call of 40
would have. Needs ``pip install 'nnxopt[checkpoint]'`` (orbax-checkpoint).
"""

import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

import nnxopt

jax.config.update("jax_enable_x64", True)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        kw = dict(param_dtype=jnp.float64, rngs=rngs)
        self.l1 = nnx.Linear(1, 8, **kw)
        self.l2 = nnx.Linear(8, 1, **kw)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def data():
    x = jnp.linspace(-jnp.pi, jnp.pi, 64, dtype=jnp.float64)[:, None]
    return x, jnp.sin(x)


def report(tag, result):
    print(f"{tag} nit={result.nit} nfev={result.nfev} fun={float(result.fun)!r}")


def save(directory: pathlib.Path) -> None:
    model = MLP(nnx.Rngs(0))
    result = nnxopt.minimize(loss_fn, model, *data(), maxiter=20)
    report("saved", result)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "state", result.state)


def resume(directory: pathlib.Path) -> None:
    model = MLP(nnx.Rngs(0))  # the same structure; its values are replaced
    x, y = data()
    # A state of the right structure to restore into: maxfev=1 stops after the
    # first evaluation and leaves the model as it is; with the options of the
    # resumed call, both share one compilation.
    template = nnxopt.minimize(loss_fn, model, x, y, maxiter=40, maxfev=1).state
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(directory / "state", template)
    result = nnxopt.minimize(loss_fn, model, x, y, maxiter=40, state=state)
    report("resumed", result)


def main(argv: list[str]) -> None:
    if argv[:1] == ["resume"]:
        resume(pathlib.Path(argv[1]))
        return
    given = argv[argv.index("--dir") + 1] if "--dir" in argv else None
    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(given or tmp).resolve()
        save(directory)
        # A new process: nothing but the checkpoint carries over.
        subprocess.run([sys.executable, __file__, "resume", str(directory)], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
