"""Child of tests/test_sharding.py: sharded solves on 4 forced CPU devices.

Run as a script (the device count must be set before JAX starts); prints one
JSON line with what the parent test asserts.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import nnxopt
from nnxopt import _compact

RIDGE = 1e-2


def specs(tree):
    """Each leaf's PartitionSpec as a list of axis names (None: replicated)."""
    return [
        [jax.tree_util.keystr(k), _padded(x)]
        for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _padded(x):
    """The spec with trailing replicated axes written out: P('x') and
    P('x', None) are the same sharding of a matrix, and which one XLA reports
    depends on where the array was made."""
    spec = getattr(x.sharding, "spec", None)
    if spec is None:
        return ["single"]
    return [*spec, *[None] * (x.ndim - len(spec))]


def memory_specs(opt_state):
    """Specs of the curvature memory in opt_state: the L-BFGS pair buffers (a
    leaf per parameter), L-BFGS-B's (m, n) buffers, or BFGS's n x n matrix."""
    if hasattr(opt_state, "s_memory"):
        return specs((opt_state.s_memory, opt_state.y_memory))
    if hasattr(opt_state, "inv_hessian"):
        return specs((opt_state.inv_hessian,))
    return specs((opt_state.diff_params_memory, opt_state.diff_updates_memory))


def least_squares(p, X, Y):
    """Ridge regression: 0.5 mean ||X W^T + b - Y||^2 + RIDGE/2 ||W||^2."""
    r = X @ p["W"].T + p["b"] - Y
    return 0.5 * jnp.mean(jnp.sum(r**2, axis=-1)) + 0.5 * RIDGE * jnp.sum(p["W"] ** 2)


def closed_form(X, Y):
    """The ridge solution (W, b) in float64 with NumPy (an independent reference)."""
    n = X.shape[0]
    Xa = np.hstack([X, np.ones((n, 1))])
    reg = np.diag([RIDGE] * X.shape[1] + [0.0]) * n
    sol = np.linalg.solve(Xa.T @ Xa + reg, Xa.T @ Y)
    return sol[:-1].T, sol[-1]


def report(name, ref, sol, exact, init_state):
    W, b = exact
    return {
        name: {
            "status": [int(ref.status), int(sol.status)],
            "nit": [int(ref.nit), int(sol.nit)],
            "diff": float(jnp.max(jnp.abs(sol.params["W"] - ref.params["W"]))),
            "err": float(np.max(np.abs(np.asarray(sol.params["W"]) - W))),
            "err_b": float(np.max(np.abs(np.asarray(sol.params["b"]) - b))),
            "params": specs(sol.params),
            "memory_init": memory_specs(init_state.opt_state),
            "memory_final": memory_specs(sol.state.opt_state),
            "grad_final": specs(sol.state.grad),
        }
    }


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    out = {"devices": jax.device_count()}
    rng = np.random.default_rng(0)
    n, d, k = 256, 8, 32
    X = rng.normal(size=(n, d))
    Y = X @ rng.normal(size=(d, k)) + 0.1 * rng.normal(size=(n, k))
    exact = closed_form(X, Y)
    p0 = {"W": jnp.zeros((k, d)), "b": jnp.zeros((k,))}
    opts = dict(gtol=1e-9, ftol=0.0, maxiter=200)
    ref = nnxopt.solve(least_squares, p0, jnp.asarray(X), jnp.asarray(Y), **opts)

    # 1. Data parallel, explicit mesh: data sharded on the batch, params replicated.
    mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Explicit,))
    Xs = jax.device_put(X, NamedSharding(mesh, P("x", None)))
    Ys = jax.device_put(Y, NamedSharding(mesh, P("x", None)))
    ps = jax.device_put(p0, NamedSharding(mesh, P()))
    init = jax.jit(nnxopt.Solver(least_squares, **opts).init)(ps, Xs, Ys)
    sol = nnxopt.solve(least_squares, ps, Xs, Ys, **opts)
    out.update(report("data_parallel", ref, sol, exact, init))

    # 2. Model parallel, automatic mesh: W sharded on its first (output) axis.
    mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Auto,))
    ps = {
        "W": jax.device_put(p0["W"], NamedSharding(mesh, P("x", None))),
        "b": jax.device_put(p0["b"], NamedSharding(mesh, P("x"))),
    }
    Xr, Yr = (jax.device_put(a, NamedSharding(mesh, P())) for a in (X, Y))
    init = jax.jit(nnxopt.Solver(least_squares, **opts).init)(ps, Xr, Yr)
    sol = nnxopt.solve(least_squares, ps, Xr, Yr, **opts)
    out.update(report("model_parallel", ref, sol, exact, init))

    # 3. Bad input: parameters and data on two different meshes.
    devices = np.array(jax.devices())
    mesh_a = jax.sharding.Mesh(devices[:2], ("x",))
    mesh_b = jax.sharding.Mesh(devices[2:], ("x",))
    pa = jax.device_put(p0, NamedSharding(mesh_a, P()))
    Xb, Yb = (jax.device_put(a, NamedSharding(mesh_b, P("x"))) for a in (X, Y))
    try:
        nnxopt.solve(least_squares, pa, Xb, Yb)
    except ValueError as error:
        out["mesh_error"] = str(error)
    out.update(mixed_leaves_cases(rng))
    out.update(implicit_case(X, Y))
    if "nnx" in sys.argv[1:]:
        # 3. minimize and minimize_step on an NNX model sharded like case 2.
        out.update(nnx_cases(mesh, X, Y, exact, ref))
    json.dump(out, sys.stdout)


def two_blocks(p, X1, X2, Y):
    """Ridge regression on two input blocks: 0.5 mean ||X1 W1^T + X2 W2 + b
    - Y||^2 + RIDGE/2 (||W1||^2 + ||W2||^2), W1 of shape (8, 4), W2 (4, 8):
    convex (solved in about 15 iterations), and its leaves can be sharded
    along different axes (W1 on its rows, W2 on its columns) for the same
    output features."""
    r = X1 @ p["W1"].T + X2 @ p["W2"] + p["b"] - Y
    ridge = jnp.sum(p["W1"] ** 2) + jnp.sum(p["W2"] ** 2)
    return 0.5 * jnp.mean(jnp.sum(r**2, axis=-1)) + 0.5 * RIDGE * ridge


def mixed_leaves_cases(rng):
    """Leaves sharded differently (W1 on its first axis, W2 on its second,
    b replicated) on an automatic and an explicit mesh, for the default
    L-BFGS and the solvers that ravel the parameters into one vector
    (L-BFGS-B without bounds and with bounds given as pytrees placed like the
    parameters, dense BFGS), each against the same solve unsharded (L-BFGS's
    and BFGS's explicit-mesh solves against their automatic ones) and the
    closed form; and L-BFGS-B data parallel (batch-sharded data, replicated
    parameters, the explicit mesh)."""
    n, d, k = 64, 4, 8
    X1, X2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    Y = X1 @ rng.normal(size=(d, k)) + X2 @ rng.normal(size=(d, k))
    Y = Y + 0.1 * rng.normal(size=(n, k))
    W, b = closed_form(np.hstack([X1, X2]), Y)
    exact = {"W1": W[:, :d], "W2": W[:, d:].T, "b": b}
    p0 = {key: np.zeros(np.shape(v)) for key, v in exact.items()}
    layout = {"W1": P("x", None), "W2": P(None, "x"), "b": P()}
    # binds 21 of the 72 entries at the solution (|W| reaches 1.9)
    box = ({"W1": -1.0, "W2": -1.0, "b": -0.1}, {"W1": 1.0, "W2": 1.0, "b": 0.1})
    opts = dict(gtol=1e-7, ftol=0.0, maxiter=100)

    def placed(tree, mesh, layout):
        if mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        return {
            key: jax.device_put(v, NamedSharding(mesh, layout.get(key, P())))
            for key, v in tree.items()
        }

    def full(bound):
        return {key: np.full(np.shape(p0[key]), v) for key, v in bound.items()}

    auto = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Auto,))
    explicit = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Explicit,))
    batch = {"X1": P("x", None), "X2": P("x", None), "Y": P("x", None)}
    out, refs = {}, {}
    compact_size = _compact.COMPACT_SIZE
    for solver, tx, bounded, where, mesh, lay in (
        *(
            (solver, tx, bounded, where, mesh, layout)
            for solver, tx, bounded in (
                ("lbfgsb", nnxopt.lbfgsb(), False),
                ("lbfgsb_box", nnxopt.lbfgsb(), True),
                ("bfgs", nnxopt.bfgs(), False),
                ("lbfgs", None, False),
                # the compact form (used for memories above COMPACT_SIZE
                # elements, made 0 for it; memory_size=9 keys its own compile)
                ("lbfgs_compact", nnxopt.lbfgs(memory_size=9), False),
            )
            for where, mesh in (("none", None), ("auto", auto), ("explicit", explicit))
            # L-BFGS and BFGS: the explicit-mesh solve is checked against the
            # automatic one, and both against the closed form (a compile
            # fewer each; L-BFGS sharded against unsharded is the cases above)
            if where != "none" or solver.startswith("lbfgsb")
        ),
        ("lbfgsb", nnxopt.lbfgsb(), False, "data", explicit, batch),
    ):
        kw = dict(opts, tx=tx)
        if bounded:
            kw["bounds"] = tuple(placed(full(b), mesh, lay) for b in box)
        data = placed({"X1": X1, "X2": X2, "Y": Y}, mesh, lay).values()
        name = f"mixed_{solver}_{where}"
        _compact.COMPACT_SIZE = 0 if solver == "lbfgs_compact" else compact_size
        try:
            sol = nnxopt.solve(two_blocks, placed(p0, mesh, lay), *data, **kw)
        except Exception as error:  # reported; the parent asserts none
            out[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            continue
        finally:
            _compact.COMPACT_SIZE = compact_size
        if mesh is None or (
            where == "auto" and solver in ("lbfgs", "lbfgs_compact", "bfgs")
        ):
            refs[solver] = sol
        if mesh is None:
            continue
        ref = refs[solver]
        out[name] = {
            "status": [int(ref.status), int(sol.status)],
            "nit": [int(ref.nit), int(sol.nit)],
            "diff": max(  # NumPy: two meshes
                float(np.max(np.abs(np.asarray(sol.params[key]) - ref.params[key])))
                for key in p0
            ),
            "err": max(
                float(np.max(np.abs(np.asarray(sol.params[key]) - exact[key])))
                for key in p0
            ),
            "active": int(sum(np.sum(np.abs(v) >= 1.0) for v in ref.params.values())),
            "params": specs(sol.params),
            "memory_final": memory_specs(sol.state.opt_state),
            "compact": getattr(sol.state.opt_state, "gram_memory", None) is not None,
        }
    return out


def implicit_case(X, Y):
    """d sum(W*) / d lam of a ridge fit, W sharded on its first axis on an
    explicit mesh, against the same derivative unsharded (implicit function
    theorem, CG on Hessian-vector products: sharded inner products)."""

    def ridge(p, X, Y, lam):
        return least_squares(p, X, Y) + 0.5 * lam * jnp.sum(p["W"] ** 2)

    p0 = {"W": jnp.zeros((Y.shape[1], X.shape[1])), "b": jnp.zeros((Y.shape[1],))}
    opts = dict(gtol=1e-10, ftol=0.0, maxiter=200)

    def total(p, X, Y, lam):
        return jnp.sum(nnxopt.solve(ridge, p, X, Y, lam, **opts).params["W"])

    lam = jnp.asarray(0.3)
    ref = jax.grad(total, argnums=3)(p0, jnp.asarray(X), jnp.asarray(Y), lam)
    mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Explicit,))
    ps = {
        "W": jax.device_put(p0["W"], NamedSharding(mesh, P("x", None))),
        "b": jax.device_put(p0["b"], NamedSharding(mesh, P())),
    }
    Xr, Yr = (jax.device_put(a, NamedSharding(mesh, P())) for a in (X, Y))
    lam_r = jax.device_put(lam, NamedSharding(mesh, P()))
    with jax.set_mesh(mesh):  # JAX's rule for explicit meshes under jit
        got = jax.grad(total, argnums=3)(ps, Xr, Yr, lam_r)
    return {"implicit_explicit": {"ref": float(ref), "got": float(got)}}


def nnx_cases(mesh, X, Y, exact, ref):
    def model_loss(model, X, Y):
        r = model(X) - Y
        w = model.kernel[...]
        return 0.5 * jnp.mean(jnp.sum(r**2, axis=-1)) + 0.5 * RIDGE * jnp.sum(w**2)

    def sharded_model():
        model = nnx.Linear(
            X.shape[1], Y.shape[1], param_dtype=jnp.float64, rngs=nnx.Rngs(0)
        )
        state = nnx.state(model, nnx.Param)
        spec = {"kernel": P(None, "x"), "bias": P("x")}
        placed = jax.tree.map(
            lambda s, v: jax.device_put(v, NamedSharding(mesh, s)),
            spec,
            {"kernel": state["kernel"][...], "bias": state["bias"][...]},
        )
        model.kernel[...] = placed["kernel"]
        model.bias[...] = placed["bias"]
        return model

    Xr, Yr = (jax.device_put(a, NamedSharding(mesh, P())) for a in (X, Y))
    model = sharded_model()
    result = nnxopt.minimize(
        model_loss, model, Xr, Yr, gtol=1e-9, ftol=0.0, maxiter=200
    )
    W = exact[0]
    out = {
        "minimize": {
            "status": [int(ref.status), int(result.status)],
            "err": float(np.max(np.abs(np.asarray(model.kernel[...]).T - W))),
            "params": specs(nnx.state(model, nnx.Param)),
            "memory_final": memory_specs(result.state.opt_state),
        }
    }
    model = sharded_model()
    opt = nnxopt.Optimizer(model, nnxopt.lbfgs(), wrt=nnx.Param)
    init_mem = memory_specs(opt.opt_state)

    @nnx.jit
    def step(model, opt, X, Y):
        return opt.minimize_step(model, model_loss, X, Y)

    for _ in range(60):
        step(model, opt, Xr, Yr)
    out["minimize_step"] = {
        "err": float(np.max(np.abs(np.asarray(model.kernel[...]).T - W))),
        "params": specs(nnx.state(model, nnx.Param)),
        "memory_init": init_mem,
        "memory_final": memory_specs(opt.opt_state),
    }
    return out


if __name__ == "__main__":
    # Before JAX starts its CPU backend (it reads XLA_FLAGS then).
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
