"""nnxopt.adam_then_lbfgs against the two minimize calls it stands for."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nnxopt

X = jnp.linspace(-1.0, 1.0, 32, dtype=jnp.float64)[:, None]
Y = jnp.tanh(2.0 * X)


def make_model():
    rngs = nnx.Rngs(0)
    return nnx.Sequential(
        nnx.Linear(1, 6, param_dtype=jnp.float64, rngs=rngs),
        jnp.tanh,
        nnx.Linear(6, 1, param_dtype=jnp.float64, rngs=rngs),
    )


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def test_handoff_equals_adam_then_minimize_by_hand():
    seen = []
    model = make_model()
    out = nnxopt.adam_then_lbfgs(
        loss_fn,
        model,
        X,
        Y,
        adam_steps=30,
        learning_rate=1e-2,
        maxiter=200,
        between=lambda m, r: seen.append((float(loss_fn(m, X, Y)), r.nit)),
    )
    reference = make_model()
    first = nnxopt.minimize(loss_fn, reference, X, Y, tx=optax.adam(1e-2), maxiter=30)
    second = nnxopt.minimize(loss_fn, reference, X, Y, maxiter=200)
    for a, b in zip(
        jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(reference))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert (out.adam.nit, out.lbfgs.nit) == (first.nit, second.nit) == (30, second.nit)
    assert out.lbfgs.nfev == second.nfev and out.lbfgs.status == second.status
    # the hook saw the model as Adam left it, once
    assert len(seen) == 1 and seen[0][1] == 30
    np.testing.assert_allclose(seen[0][0], float(first.fun), rtol=1e-12)
    assert out.adam_seconds > 0 and out.lbfgs_seconds > 0


def test_handoff_rejects_negative_adam_steps():
    with pytest.raises(
        ValueError, match=r"adam_then_lbfgs: adam_steps must be an int >= 0; got -1"
    ):
        nnxopt.adam_then_lbfgs(loss_fn, make_model(), X, Y, adam_steps=-1)
