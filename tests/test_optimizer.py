"""nnxopt.Optimizer against nnx.Optimizer and hand-written optax loops."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nnxopt

RTOL64 = 1e-10  # step-for-step agreement in float64 (round-off only)
RTOL32 = 1e-5

X64 = jnp.linspace(-1.0, 1.0, 16, dtype=jnp.float64)[:, None] * jnp.ones((1, 2))
Y64 = jnp.sin(3.0 * X64[:, :1]) + X64[:, 1:] ** 2


class MLP(nnx.Module):
    """Tiny 2-8-1 tanh network; dtype chosen by the test."""

    def __init__(self, dtype=jnp.float64, seed=0):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(2, 8, param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, param_dtype=dtype, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def mse(model, x=X64, y=Y64):
    return jnp.mean((model(x) - y) ** 2)


def raw_mse(p, x=X64, y=Y64):
    """The same network written by hand on a dict of arrays (the reference)."""
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)


def raw_params(model):
    return {
        "w1": model.l1.kernel[...],
        "b1": model.l1.bias[...],
        "w2": model.l2.kernel[...],
        "b2": model.l2.bias[...],
    }


def assert_tree_close(a, b, rtol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol)


class Counter:
    """Counts evaluations of a traced function at run time (host callback)."""

    def __init__(self):
        self.n = 0

    def tick(self, value):
        jax.debug.callback(self._inc, value)
        return value

    def _inc(self, _):
        self.n += 1

    def read(self):
        jax.effects_barrier()
        return self.n


# -- minimize_step against the hand-written optax L-BFGS loop ----------------


def hand_written_lbfgs(params, steps, counter):
    tx = optax.lbfgs()

    def fn(p):
        return counter.tick(raw_mse(p))

    value_and_grad = optax.value_and_grad_from_state(fn)

    @jax.jit
    def step(p, state):
        value, grad = value_and_grad(p, state=state)
        updates, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=fn)
        return optax.apply_updates(p, updates), state

    state = tx.init(params)
    trajectory = []
    for _ in range(steps):
        params, state = step(params, state)
        trajectory.append(params)
    return trajectory


@pytest.mark.parametrize("wrapper", ["none", "nnx.jit", "jax.jit"])
def test_minimize_step_matches_hand_written_lbfgs(wrapper):
    steps = 12
    ref_counter, counter = Counter(), Counter()
    model = MLP()
    reference = hand_written_lbfgs(raw_params(model), steps, ref_counter)

    def loss_fn(m):
        return counter.tick(mse(m))

    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
    if wrapper == "none":

        def run():
            opt.minimize_step(model, loss_fn)
    elif wrapper == "nnx.jit":
        step = nnx.jit(lambda m, o: o.minimize_step(m, loss_fn))

        def run():
            step(model, opt)
    else:
        graphdef, state = nnx.split((model, opt))

        @jax.jit
        def pure_step(state):
            m, o = nnx.merge(graphdef, state)
            o.minimize_step(m, loss_fn)
            return nnx.state((m, o))

        def run():
            nonlocal state
            state = pure_step(state)
            nnx.update((model, opt), state)

    for k in range(steps):
        run()
        assert_tree_close(raw_params(model), reference[k], RTOL64)
    assert counter.read() == ref_counter.read()
    # L-BFGS did work: the loss fell by orders of magnitude (sanity, not the test)
    assert float(mse(model)) < 0.1 * float(raw_mse(raw_params(MLP())))


def test_minimize_step_iteration_costs_exactly_its_line_search_evaluations():
    counter = Counter()
    model = MLP()

    def loss_fn(m):
        return counter.tick(mse(m))

    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
    opt.minimize_step(model, loss_fn)  # first call: 1 evaluation + line search
    for _ in range(5):
        before = counter.read()
        opt.minimize_step(model, loss_fn)
        state = opt.opt_state[-1]  # the zoom line search's state
        used = int(state.info.num_linesearch_steps[...])
        assert counter.read() - before == used


# -- update(): identical to nnx.Optimizer for first-order transforms ---------


@pytest.mark.parametrize("graph", [True, False])
@pytest.mark.parametrize(
    "make_tx", [lambda: optax.adam(1e-2), lambda: optax.sgd(0.1, 0.9)]
)
def test_update_matches_nnx_optimizer_exactly(make_tx, graph):
    model_a, model_b = MLP(), MLP()
    ours = nnxopt.Optimizer(model_a, make_tx(), wrt=nnx.Param, graph=graph)
    theirs = nnx.Optimizer(model_b, make_tx(), wrt=nnx.Param, graph=graph)
    for _ in range(3):
        ours.update(model_a, nnx.grad(mse)(model_a))
        theirs.update(model_b, nnx.grad(mse)(model_b))
        for x, y in zip(
            jax.tree.leaves(nnx.state(model_a)), jax.tree.leaves(nnx.state(model_b))
        ):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(ours.step[...]) == int(theirs.step[...]) == 3


def test_update_accepts_pure_gradients_that_nnx_optimizer_ignores():
    model = MLP()
    opt = nnxopt.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    before = raw_params(model)
    grads = nnx.as_pure(nnx.state(nnx.grad(mse)(model), nnx.Param))
    expected = raw_params(model)
    expected = jax.tree.map(
        lambda p, g: p - 0.5 * g, expected, jax.grad(raw_mse)(before)
    )
    opt.update(model, grads)
    assert_tree_close(raw_params(model), expected, RTOL64)


class LoRAModel(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        base = nnx.Linear(2, 3, param_dtype=jnp.float64, rngs=rngs)
        self.lora = nnx.LoRA(
            2, 2, 3, base_module=base, param_dtype=jnp.float64, rngs=rngs
        )
        self.lora.lora_b[...] = 0.1 * jnp.ones_like(self.lora.lora_b[...])
        self.scale = nnx.BatchStat(jnp.asarray(2.0, jnp.float64))

    def __call__(self, x):
        return self.scale[...] * self.lora(x)


def lora_loss(m):
    return jnp.mean((m(X64) - jnp.cos(X64[:, :1] * jnp.arange(1.0, 4.0))) ** 2)


def test_lora_only_training_with_lbfgs_matches_hand_written_loop():
    model = LoRAModel()
    frozen = nnx.clone(model)
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.LoRAParam)

    def raw(p):  # the reference: base weights and scale closed over by hand
        base = frozen.lora.base_module
        a, b = p["a"], p["b"]
        y = X64 @ base.kernel[...] + base.bias[...] + X64 @ a @ b
        return jnp.mean((2.0 * y - jnp.cos(X64[:, :1] * jnp.arange(1.0, 4.0))) ** 2)

    p = {"a": frozen.lora.lora_a[...], "b": frozen.lora.lora_b[...]}
    tx = optax.lbfgs()
    state = tx.init(p)
    vg = optax.value_and_grad_from_state(raw)
    for _ in range(6):
        opt.minimize_step(model, lora_loss)
        value, grad = vg(p, state=state)
        updates, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=raw)
        p = optax.apply_updates(p, updates)
        assert_tree_close(
            {"a": model.lora.lora_a[...], "b": model.lora.lora_b[...]}, p, 1e-9
        )
    # only the LoRA variables moved
    np.testing.assert_array_equal(
        model.lora.base_module.kernel[...], frozen.lora.base_module.kernel[...]
    )
    np.testing.assert_array_equal(
        model.lora.base_module.bias[...], frozen.lora.base_module.bias[...]
    )
    assert float(model.scale[...]) == 2.0


def test_update_with_model_level_value_fn_on_lora_subset():
    model = LoRAModel()
    base_kernel = np.asarray(model.lora.base_module.kernel[...])
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.LoRAParam)
    diff = nnx.DiffState(0, nnx.LoRAParam)
    for _ in range(3):
        loss, grads = nnx.value_and_grad(lora_loss, argnums=diff)(model)
        opt.update(model, grads, value=loss, value_fn=lora_loss)
    np.testing.assert_array_equal(model.lora.base_module.kernel[...], base_kernel)
    # reference: the same three iterations through minimize_step
    ref = LoRAModel()
    ref_opt = nnxopt.Optimizer(ref, optax.lbfgs(), wrt=nnx.LoRAParam)
    for _ in range(3):
        ref_opt.minimize_step(ref, lora_loss)
    assert_tree_close(
        nnx.state(model, nnx.LoRAParam), nnx.state(ref, nnx.LoRAParam), 1e-9
    )


# -- every extra-argument transform through the same call --------------------


def _tx_cases():
    return {
        "adam": (lambda: optax.adam(1e-2), ()),
        "sgd": (lambda: optax.sgd(0.1), ()),
        "lbfgs": (lambda: optax.lbfgs(), ("value", "grad", "value_fn")),
        "nnxopt.lbfgs": (lambda: nnxopt.lbfgs(), ("value", "grad", "value_fn")),
        "sgd+backtracking": (
            lambda: optax.chain(
                optax.sgd(1.0), optax.scale_by_backtracking_linesearch(15)
            ),
            ("value", "grad", "value_fn"),
        ),
        "sgd+zoom": (
            lambda: optax.chain(optax.sgd(1.0), optax.scale_by_zoom_linesearch(15)),
            ("value", "grad", "value_fn"),
        ),
        "polyak_sgd": (lambda: optax.polyak_sgd(max_learning_rate=1.0), ("value",)),
        "reduce_on_plateau": (
            lambda: optax.chain(
                optax.adam(1e-2), optax.contrib.reduce_on_plateau(patience=1)
            ),
            ("value",),
        ),
        "sophia": (lambda: optax.contrib.sophia(1e-2), ("obj_fn",)),
    }


@pytest.mark.parametrize("name", list(_tx_cases()))
def test_minimize_step_runs_every_transform_like_the_hand_written_loop(name):
    make_tx, needs = _tx_cases()[name]
    model = MLP()
    p = raw_params(model)
    tx = make_tx()
    state = tx.init(p)
    opt = nnxopt.Optimizer(model, make_tx(), wrt=nnx.Param)
    for _ in range(3):
        loss = opt.minimize_step(model, mse)
        value, grad = jax.value_and_grad(raw_mse)(p)
        np.testing.assert_allclose(float(loss), float(value), rtol=1e-10)
        every = dict(value=value, grad=grad, value_fn=raw_mse, obj_fn=raw_mse)
        updates, state = tx.update(grad, state, p, **{k: every[k] for k in needs})
        p = optax.apply_updates(p, updates)
        assert_tree_close(raw_params(model), p, 1e-9)


# -- non-trainable state policy ---------------------------------------------


class Noisy(nnx.Module):
    """BatchNorm in training mode and Dropout: state written on every call."""

    def __init__(self):
        rngs = nnx.Rngs(0, dropout=1)
        self.l1 = nnx.Linear(2, 8, param_dtype=jnp.float64, rngs=rngs)
        self.bn = nnx.BatchNorm(8, param_dtype=jnp.float64, rngs=rngs)
        self.drop = nnx.Dropout(0.25, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.relu(self.bn(self.l1(x)))))


def test_state_policy_trials_leave_no_trace_and_commit_once():
    counter = Counter()
    seen_counts = []

    def loss_fn(m):
        jax.debug.callback(lambda c: seen_counts.append(int(c)), m.drop.rngs.count[...])
        return counter.tick(mse(m))

    model = Noisy()
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
    for it in range(4):
        expected = nnx.clone(model)
        mse(expected)  # ONE forward at the start point, on a copy: the reference
        seen_counts.clear()
        before = counter.read()
        opt.minimize_step(model, loss_fn)
        jax.effects_barrier()
        evaluations = counter.read() - before
        # the line search tried several points, yet only one commit happened
        assert evaluations >= 2, it
        assert len(set(seen_counts)) == 1  # common random numbers: one key
        np.testing.assert_allclose(
            model.bn.mean[...], expected.bn.mean[...], rtol=1e-12
        )
        np.testing.assert_allclose(model.bn.var[...], expected.bn.var[...], rtol=1e-12)
        assert int(model.drop.rngs.count[...]) == int(expected.drop.rngs.count[...])
        assert int(model.drop.rngs.count[...]) == it + 1


def test_stateless_frozen_state_is_detected_and_evaluations_are_reused():
    counter = Counter()
    model = LoRAModel()  # has a BatchStat that the loss reads but never writes

    def loss_fn(m):
        return counter.tick(lora_loss(m))

    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.LoRAParam)
    opt.minimize_step(model, loss_fn)
    before = counter.read()
    opt.minimize_step(model, loss_fn)
    used = int(opt.opt_state[-1].info.num_linesearch_steps[...])
    assert counter.read() - before == used


# -- misuse gets our message ---------------------------------------------------


def test_line_search_without_value_fn_explains_itself():
    model = MLP()
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
    loss, grads = nnx.value_and_grad(mse)(model)
    with pytest.raises(
        TypeError, match=r"Optimizer\.update.*'value_fn'.*minimize_step"
    ):
        opt.update(model, grads, value=loss)
    with pytest.raises(TypeError, match=r"'value', 'grad', 'value_fn'|value_fn"):
        opt.update(model, grads)


def test_grads_that_do_not_match_wrt_are_rejected():
    model = MLP()
    opt = nnxopt.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    wrong = {"w": jnp.zeros(3)}
    with pytest.raises(
        TypeError, match=r"Optimizer\.update: grads do not match.*w: \(3,\)"
    ):
        opt.update(model, wrong)


def test_non_scalar_loss_is_rejected():
    model = MLP()
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
    with pytest.raises(
        ValueError, match=r"minimize_step: loss_fn must return a real.*\(16, 1\)"
    ):
        opt.minimize_step(model, lambda m: (m(X64) - Y64) ** 2)


def test_tuple_loss_without_has_aux_is_rejected():
    model = MLP()
    opt = nnxopt.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    with pytest.raises(TypeError, match="has_aux=True"):
        opt.minimize_step(model, lambda m: (mse(m), 1.0))


class Counted(nnx.Variable):
    pass


def test_integer_wrt_selection_is_rejected():
    model = MLP()
    model.calls = Counted(jnp.asarray(0, jnp.int32))
    with pytest.raises(
        TypeError, match=r"nnxopt\.Optimizer: wrt=.*Counted.*non-floating"
    ):
        nnxopt.Optimizer(model, optax.adam(1e-3), wrt=Counted)


def test_empty_wrt_selection_is_rejected():
    with pytest.raises(ValueError, match=r"selects no Variable.*LoRAParam"):
        nnxopt.Optimizer(MLP(), optax.adam(1e-3), wrt=nnx.LoRAParam)


def test_non_transform_tx_is_rejected():
    with pytest.raises(TypeError, match=r"tx must be an optax GradientTransformation"):
        nnxopt.Optimizer(MLP(), "lbfgs", wrt=nnx.Param)  # type: ignore[arg-type]


# -- no retrace, float32/float64, has_aux, non-finite -------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("jit", ["none", "nnx.jit"])
def test_no_retrace_on_second_call(dtype, jit):
    traces = []
    x, y = X64.astype(dtype), Y64.astype(dtype)

    def loss_fn(m, x, y):
        traces.append(1)
        return mse(m, x, y)

    model = MLP(dtype)
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
    if jit == "nnx.jit":
        step = nnx.jit(lambda m, o, x, y: o.minimize_step(m, loss_fn, x, y))
    else:

        def step(m, o, x, y):
            return o.minimize_step(m, loss_fn, x, y)

    loss = step(model, opt, x, y)
    assert loss.dtype == dtype
    first = len(traces)
    for _ in range(3):
        step(model, opt, x + 0.0, y)
    assert len(traces) == first
    assert jax.tree.leaves(nnx.state(model))[0].dtype == dtype


def test_has_aux_returns_the_aux_of_the_start_point():
    model = MLP()
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)

    def loss_fn(m):
        pred = m(X64)
        return jnp.mean((pred - Y64) ** 2), {"pred": pred}

    expected = model(X64)
    loss, aux = opt.minimize_step(model, loss_fn, has_aux=True)
    np.testing.assert_allclose(aux["pred"], expected, rtol=1e-12)
    np.testing.assert_allclose(float(loss), float(mse(MLP())), rtol=1e-12)


def test_non_finite_update_never_enters_the_model():
    model = MLP()
    opt = nnxopt.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    before = raw_params(model)

    def loss_fn(m):  # d/db sqrt(|b|) is infinite at b = 0, where b2 starts
        return mse(m) + jnp.sqrt(jnp.abs(m.l2.bias[...]).sum())

    opt.minimize_step(model, loss_fn)
    assert_tree_close(raw_params(model), before, 0.0)
    assert int(opt.step[...]) == 0
    assert all(
        np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(nnx.state(model))
    )


def test_transform_cache_is_keyed_on_structure_not_identity():
    traces = []

    def loss_fn(m):
        traces.append(1)
        return mse(m)

    counts = []
    for _ in range(2):
        model = MLP()
        opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
        opt.minimize_step(model, loss_fn)
        opt.minimize_step(model, loss_fn)
        counts.append(len(traces))
    assert counts[0] >= 1
    assert counts[1] == counts[0]  # a new but identical optax.lbfgs(): no new trace


def test_error_messages_name_the_call():
    model = MLP()
    opt = nnxopt.ModelAndOptimizer(model, optax.lbfgs())
    loss, grads = nnx.value_and_grad(mse)(model)
    with pytest.raises(TypeError, match=re.escape("ModelAndOptimizer.update")):
        opt.update(grads, value=loss)


# -- drop-in: flax's state-level value_fn, step for step with nnx.Optimizer ---
#
# nnx.Optimizer passes optax's extra arguments through, so flax code writes
# value_fn as a function of the wrt-filtered nnx.State. The same user code must
# give nnxopt.Optimizer the same parameters as nnx.Optimizer, in every jit mode.

WRT = {
    "Param": nnx.Param,
    "Param+LoRAParam": (nnx.Param, nnx.LoRAParam),
    "LoRAParam": nnx.LoRAParam,
}


def flax_style_step(model, opt, wrt, held):
    """One line-search step written for nnx.Optimizer: value_fn takes the state."""
    graphdef, _, other = nnx.split(model, wrt, ...)

    def value_fn(state):
        return lora_loss(nnx.merge(graphdef, state, other))

    value, grads = nnx.value_and_grad(lora_loss, argnums=nnx.DiffState(0, wrt))(model)
    if held:
        return opt.update(grads, value=value, grad=grads, value_fn=value_fn)
    return opt.update(model, grads, value=value, grad=grads, value_fn=value_fn)


def flax_functional_step(model, opt, wrt, held):
    """The functional form: params and non-differentiable state kept apart."""
    graphdef, params, nondiff = nnx.split(model, wrt, ..., graph=True)

    def loss_of(params, nondiff):
        return lora_loss(nnx.merge(graphdef, params, nondiff))

    value, grads = jax.value_and_grad(loss_of)(params, nondiff)
    return opt.update(
        model, grads, value=value, grad=grads, value_fn=lambda p: loss_of(p, nondiff)
    )


def jitted(wrapper, step, model, opt):
    """``step(model, opt)`` without jit, under nnx.jit or under jax.jit over
    nnx.split/nnx.merge; built once, so each mode compiles once."""
    if wrapper == "none":
        return lambda: step(model, opt)
    if wrapper == "nnx.jit":
        fast = nnx.jit(step)
        return lambda: fast(model, opt)
    graphdef, _ = nnx.split((model, opt))

    @jax.jit
    def pure(state):
        m, o = nnx.merge(graphdef, state)
        step(m, o)
        return nnx.state((m, o))

    return lambda: nnx.update((model, opt), pure(nnx.state((model, opt))))


def line_search_sgd():
    # Gradient steps scaled by optax's backtracking line search: value_fn is
    # called as L-BFGS's search calls it, at a fraction of L-BFGS's compile time
    # (this matrix runs on 2 cores). optax.lbfgs itself is compared with
    # nnx.Optimizer in test_lbfgs_spends_no_more_evaluations_than_nnx_optimizer.
    return optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(15))


STEP_FORMS = {  # name: (wrt, the user's step function)
    "Param": ("Param", flax_style_step),
    "Param+LoRAParam": ("Param+LoRAParam", flax_style_step),
    "functional LoRAParam": ("LoRAParam", flax_functional_step),
}


@functools.cache
def nnx_optimizer_reference(form, steps=3):
    """nnx.Optimizer's parameters after each step, under nnx.jit (computed once)."""
    wrt_name, user_step = STEP_FORMS[form]
    wrt = WRT[wrt_name]
    model = LoRAModel()
    opt = nnx.Optimizer(model, line_search_sgd(), wrt=wrt)
    step = jitted("nnx.jit", lambda m, o: user_step(m, o, wrt, False), model, opt)
    trajectory = []
    for _ in range(steps):
        step()
        trajectory.append(jax.tree.map(np.asarray, nnx.as_pure(nnx.state(model, wrt))))
    return trajectory


@pytest.mark.parametrize(
    ("form", "wrapper", "held"),
    [
        (form, wrapper, False)
        for form in STEP_FORMS
        for wrapper in ("none", "nnx.jit", "jax.jit")
    ]
    + [("Param", "jax.jit", True)],  # ModelAndOptimizer, as flax's own test uses it
)
def test_state_level_value_fn_matches_nnx_optimizer(form, wrapper, held):
    wrt_name, user_step = STEP_FORMS[form]
    wrt = WRT[wrt_name]
    model = LoRAModel()
    cls = nnxopt.ModelAndOptimizer if held else nnxopt.Optimizer
    opt = cls(model, line_search_sgd(), wrt=wrt)
    frozen = jax.tree.map(np.asarray, nnx.as_pure(nnx.state(model, nnx.Not(wrt))))
    step = jitted(wrapper, lambda m, o: user_step(m, o, wrt, held), model, opt)
    for expected in nnx_optimizer_reference(form):
        step()
        # the same arithmetic as nnx.Optimizer: agreement to float64 round-off
        assert_tree_close(nnx.as_pure(nnx.state(model, wrt)), expected, RTOL64)
    assert int(opt.step[...]) == 3
    assert float(lora_loss(model)) < 0.5 * float(lora_loss(LoRAModel()))  # it moved
    for a, b in zip(  # only the wrt Variables moved
        jax.tree.leaves(frozen),
        jax.tree.leaves(nnx.state(model, nnx.Not(wrt))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("wrapper", ["none", "nnx.jit"])
def test_minimize_step_takes_a_stated_state_level_loss(wrapper):
    model = LoRAModel()
    graphdef, _, other = nnx.split(model, nnx.Param, ...)

    def state_loss(state):
        return lora_loss(nnx.merge(graphdef, state, other))

    opt = nnxopt.Optimizer(model, line_search_sgd(), wrt=nnx.Param)
    step = jitted(
        wrapper,
        lambda m, o: o.minimize_step(m, nnxopt.state_fn(state_loss)),
        model,
        opt,
    )
    for expected in nnx_optimizer_reference("Param"):
        step()
        assert_tree_close(nnx.as_pure(nnx.state(model, nnx.Param)), expected, RTOL64)


def test_lbfgs_spends_no_more_evaluations_than_nnx_optimizer():
    """Counting objective: update() with flax's state-level value_fn costs what
    nnx.Optimizer costs; minimize_step reuses the line search's evaluations."""
    steps = 3
    counts, finals = {}, {}
    for name in ("nnx.Optimizer", "update", "minimize_step"):
        counter = Counter()

        def counted(m, counter=counter):
            return counter.tick(lora_loss(m))

        def flax_step(model, opt, counted=counted):
            graphdef, _, other = nnx.split(model, nnx.Param, ...)
            value, grads = nnx.value_and_grad(counted)(model)
            opt.update(
                model,
                grads,
                value=value,
                grad=grads,
                value_fn=lambda s: counted(nnx.merge(graphdef, s, other)),
            )

        model = LoRAModel()
        cls = nnx.Optimizer if name == "nnx.Optimizer" else nnxopt.Optimizer
        opt = cls(model, optax.lbfgs(), wrt=nnx.Param)
        if name == "minimize_step":
            step = nnx.jit(lambda m, o, counted=counted: o.minimize_step(m, counted))
        else:
            step = nnx.jit(flax_step)
        for _ in range(steps):
            step(model, opt)
        counts[name] = counter.read()
        finals[name] = nnx.as_pure(nnx.state(model, nnx.Param))
    assert counts["update"] == counts["nnx.Optimizer"]
    assert counts["minimize_step"] <= counts["nnx.Optimizer"] - (steps - 1)
    # the same iterates all three ways (the evaluations saved are repeats)
    assert_tree_close(finals["update"], finals["nnx.Optimizer"], RTOL64)
    assert_tree_close(finals["minimize_step"], finals["nnx.Optimizer"], RTOL64)


def square_of_sum(tree):
    """Traces on a model and on a state alike, with different meanings: the
    model's leaves include its frozen base weights and BatchStat."""
    return sum(jnp.sum(x) for x in jax.tree.leaves(tree)) ** 2


def test_a_function_of_either_form_is_called_as_nnx_optimizer_calls_it():
    wrt = nnx.LoRAParam

    def tx():
        return optax.chain(optax.sgd(0.1), optax.scale_by_backtracking_linesearch(8))

    def run(cls, value_fn, on_model):
        model = LoRAModel()
        opt = cls(model, tx(), wrt=wrt)
        for _ in range(2):
            if on_model:
                f = square_of_sum
                value, grads = nnx.value_and_grad(f, argnums=nnx.DiffState(0, wrt))(
                    model
                )
            else:
                state = nnx.state(model, wrt)  # Variables: nnx.Optimizer filters grads
                value, grads = jax.value_and_grad(square_of_sum)(state)
            opt.update(model, grads, value=value, grad=grads, value_fn=value_fn)
        return nnx.as_pure(nnx.state(model, wrt))

    graphdef, _, other = nnx.split(LoRAModel(), wrt, ...)

    def as_model(state):  # the model form's meaning, written for nnx.Optimizer
        return square_of_sum(nnx.merge(graphdef, state, other))

    upstream = run(nnx.Optimizer, square_of_sum, on_model=False)
    upstream_model_meaning = run(nnx.Optimizer, as_model, on_model=True)
    # the rule: whatever traces with the state is called with the state
    assert_tree_close(run(nnxopt.Optimizer, square_of_sum, False), upstream, RTOL64)
    assert_tree_close(
        run(nnxopt.Optimizer, nnxopt.state_fn(square_of_sum), False), upstream, RTOL64
    )
    # stated explicitly, the model form is used instead
    assert_tree_close(
        run(nnxopt.Optimizer, nnxopt.model_fn(square_of_sum), True),
        upstream_model_meaning,
        RTOL64,
    )
    # (the two meanings really differ, or this test could not fail)
    a, b = jax.tree.leaves(upstream)[0], jax.tree.leaves(upstream_model_meaning)[0]
    assert not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-3)


@pytest.mark.parametrize("form", ["state", "model", "state_fn", "model_fn"])
def test_an_error_in_value_fn_reaches_the_user_with_a_note(form):
    model = MLP()
    graphdef = nnx.graphdef(model)
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
    loss, grads = nnx.value_and_grad(mse)(model)

    def buggy_model_fn(m):  # the user's own bug: a target of the wrong length
        return jnp.mean((m(X64) - Y64[:3]) ** 2)

    def buggy_state_fn(state):
        return buggy_model_fn(nnx.merge(graphdef, state))

    value_fn = {
        "state": buggy_state_fn,
        "model": buggy_model_fn,
        "state_fn": nnxopt.state_fn(buggy_state_fn),
        "model_fn": nnxopt.model_fn(buggy_model_fn),
    }[form]
    with pytest.raises(Exception) as info:
        opt.update(model, grads, value=loss, value_fn=value_fn)
    note = "\n".join(getattr(info.value, "__notes__", []))
    if form.endswith("_fn"):  # stated: only the user's own error, and why
        assert "incompatible shapes" in str(info.value)
        assert f"it is wrapped in nnxopt.{form}" in note
    else:  # neither form traces: flax's form's error, the other chained
        assert "could not call value_fn in either form" in note
        assert "nnxopt.model_fn(f)" in note and "nnxopt.state_fn(f)" in note
        own = info.value if form == "state" else info.value.__cause__
        assert "incompatible shapes" in str(own)
        assert "incompatible shapes" in str(info.value) + note
    assert int(opt.step[...]) == 0


@pytest.mark.parametrize(
    ("concrete", "form"),
    [
        (float, "state"),
        (lambda v: v.item(), "model"),
        (lambda v: jnp.asarray(np.asarray(v)), "model_fn"),
    ],
    ids=["float-state", "item-model", "np.asarray-model_fn"],
)
def test_a_value_fn_making_a_traced_value_concrete_is_explained(concrete, form):
    model = MLP()
    graphdef = nnx.graphdef(model)
    opt = nnxopt.Optimizer(model, nnxopt.lbfgs(), wrt=nnx.Param)
    loss, grads = nnx.value_and_grad(mse)(model)
    kept = nnx.state(model, nnx.Param)

    def model_level(m):
        return concrete(mse(m))

    value_fn = {
        "state": lambda state: model_level(nnx.merge(graphdef, state)),
        "model": model_level,
        "model_fn": nnxopt.model_fn(model_level),
    }[form]
    with pytest.raises(
        TypeError,
        match=r"Optimizer\.update: value_fn turned a traced array into a Python "
        r"value .*compute with jnp",
    ):
        opt.update(model, grads, value=loss, value_fn=value_fn)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Param), kept)
    assert int(opt.step[...]) == 0


def test_value_fn_and_form_wrappers_must_be_callable():
    model = MLP()
    opt = nnxopt.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)
    loss, grads = nnx.value_and_grad(mse)(model)
    with pytest.raises(TypeError, match=r"Optimizer\.update: value_fn must be.*3\.0"):
        opt.update(model, grads, value=loss, value_fn=3.0)
    with pytest.raises(TypeError, match=r"nnxopt\.state_fn: fn must be callable.*None"):
        nnxopt.state_fn(None)
    assert repr(nnxopt.model_fn(mse)).startswith("nnxopt.model_fn(<function mse")


def test_keyword_arguments_reach_a_state_level_value_fn_like_nnx_optimizer():
    # optax routes update()'s extra keywords to value_fn by its signature
    def run(cls):
        model = MLP()
        graphdef = nnx.graphdef(model)
        opt = cls(model, line_search_sgd(), wrt=nnx.Param)

        def value_fn(state, target):
            return mse(nnx.merge(graphdef, state), X64, target)

        for _ in range(2):
            loss, grads = nnx.value_and_grad(mse)(model, X64, 2.0 * Y64)
            opt.update(
                model,
                grads,
                value=loss,
                grad=grads,
                value_fn=value_fn,
                target=2.0 * Y64,
            )
        return nnx.as_pure(nnx.state(model, nnx.Param))

    assert_tree_close(run(nnxopt.Optimizer), run(nnx.Optimizer), RTOL64)


# -- the rest of what flax's optimizer tests check, against nnx.Optimizer ------


@pytest.mark.parametrize("wrt_name", list(WRT))
def test_first_order_update_returns_updates_and_moves_only_wrt(wrt_name):
    wrt = WRT[wrt_name]
    models = [LoRAModel(), LoRAModel()]
    opts = [
        cls(m, optax.adam(1e-2), wrt=wrt)
        for cls, m in zip((nnx.Optimizer, nnxopt.Optimizer), models)
    ]
    frozen = nnx.clone(nnx.state(models[1], nnx.Not(wrt)))
    grad_fn = nnx.grad(lora_loss, argnums=nnx.DiffState(0, wrt))
    for _ in range(2):
        returned = [o.update(m, grad_fn(m)) for m, o in zip(models, opts)]
        assert_tree_close(returned[1], returned[0], RTOL64)
        assert_tree_close(nnx.state(models[1]), nnx.state(models[0]), RTOL64)
    assert jax.tree.structure(returned[1]) == jax.tree.structure(
        nnx.as_pure(nnx.state(models[1], wrt))
    )
    for a, b in zip(
        jax.tree.leaves(frozen), jax.tree.leaves(nnx.state(models[1], nnx.Not(wrt)))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_split_merge_and_sharding_like_nnx_optimizer():
    mesh = jax.make_mesh(
        (1, 1), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2
    )
    specs = []
    for cls in (nnx.Optimizer, nnxopt.Optimizer):
        with jax.set_mesh(mesh):
            model = nnx.Linear(
                2,
                3,
                use_bias=False,
                rngs=nnx.Rngs(0),
                kernel_init=nnx.with_partitioning(
                    nnx.initializers.lecun_normal(), sharding=("a", "b")
                ),
            )
            opt = cls(model, optax.adamw(0.1), wrt=nnx.Param)
        mu = nnx.state(opt)["opt_state"][0]["mu"]["kernel"]
        spec = nnx.get_partition_spec(nnx.state(opt))["opt_state"][0]["mu"]["kernel"]
        specs.append((mu.out_sharding, spec.get_value()))
        graphdef, state = nnx.split(opt)
        again = nnx.merge(graphdef, state)
        assert type(again) is cls
        assert_tree_close(nnx.state(again), nnx.state(opt), 0.0)
    assert specs[1] == specs[0] == (("a", "b"), jax.sharding.PartitionSpec("a", "b"))


def test_subclass_of_model_and_optimizer_with_extra_state():
    def make(base):
        class TrainState(base):
            def __init__(self, model, tx, metrics):
                self.metrics = metrics
                super().__init__(model, tx)

            def update(self, *, grads, **values):  # type: ignore[override]
                self.metrics.update(**values)
                return super().update(grads)

        return TrainState(MLP(), optax.adam(1e-2), nnx.metrics.Average())

    states = [make(nnx.ModelAndOptimizer), make(nnxopt.ModelAndOptimizer)]
    for _ in range(2):
        for s in states:
            s.update(grads=nnx.grad(mse)(s.model), values=mse(s.model))
    np.testing.assert_allclose(
        float(states[1].metrics.compute()), float(states[0].metrics.compute()), RTOL64
    )
    assert_tree_close(nnx.state(states[1].model), nnx.state(states[0].model), RTOL64)


def scale_by_objective(learning_rate):
    """A minimal transform that reads ``obj_fn`` as optax.contrib.sophia does
    (sophia itself costs seconds to compile): step = -lr * f(params) * grad."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params, *, obj_fn, **extra):
        scale = -learning_rate * obj_fn(params)
        return jax.tree.map(lambda g: scale * g, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def test_obj_fn_of_either_form_matches_nnx_optimizer():
    def run(cls, obj_fn):
        model = MLP()
        opt = cls(model, scale_by_objective(0.5), wrt=nnx.Param)
        for _ in range(2):
            opt.update(model, nnx.grad(mse)(model), obj_fn=obj_fn)
        return nnx.as_pure(nnx.state(model, nnx.Param))

    graphdef = nnx.graphdef(MLP())

    def state_level(state):
        return mse(nnx.merge(graphdef, state))

    expected = run(nnx.Optimizer, state_level)
    assert_tree_close(run(nnxopt.Optimizer, state_level), expected, RTOL64)
    assert_tree_close(run(nnxopt.Optimizer, mse), expected, RTOL64)  # model form
    assert not np.allclose(  # the objective's value moved the parameters
        np.asarray(jax.tree.leaves(expected)[0]),
        np.asarray(jax.tree.leaves(raw_params(MLP()))[0]),
    )


# -- reuse only where it is valid: the iterate and the arguments (issue 16) --

COUNTER = Counter()


def counted_mse(model, x, y):
    """mse on (x, y), one count per evaluation (defined once: compiled once)."""
    return COUNTER.tick(mse(model, x, y))


def _searched(opt):
    """Evaluations the last line search made (nnxopt.lbfgs's own fields)."""
    return int(opt.opt_state.linesearch_state.info.num_value_evals[...])


def _stepped_optimizer(x=X64, y=Y64, steps=3):
    model = MLP()
    opt = nnxopt.Optimizer(model, nnxopt.lbfgs(), wrt=nnx.Param)
    for _ in range(steps):
        opt.minimize_step(model, counted_mse, x, y)
    return model, opt


def test_minimize_step_reuses_while_nothing_changes():
    model, opt = _stepped_optimizer()
    before = COUNTER.read()
    opt.minimize_step(model, counted_mse, X64, Y64)
    # No evaluation of its own: exactly the line search's.
    assert COUNTER.read() - before == _searched(opt)


def test_minimize_step_re_evaluates_after_the_parameters_were_changed():
    model, opt = _stepped_optimizer()
    nnx.update(model, nnx.state(MLP(seed=1), nnx.Param))  # e.g. a checkpoint
    edited = raw_params(model)
    before = COUNTER.read()
    loss = opt.minimize_step(model, counted_mse, X64, Y64)
    # The loss at the edited point, by hand, not the stale stored one.
    np.testing.assert_allclose(float(loss), float(raw_mse(edited)), rtol=RTOL64)
    assert COUNTER.read() - before == _searched(opt) + 1
    assert float(raw_mse(raw_params(model))) < float(raw_mse(edited))
    # A manual edit of one weight is seen too.
    model.l2.bias[...] = model.l2.bias[...] + 3.0
    edited = raw_params(model)
    loss = opt.minimize_step(model, counted_mse, X64, Y64)
    np.testing.assert_allclose(float(loss), float(raw_mse(edited)), rtol=RTOL64)


def test_minimize_step_re_evaluates_on_new_arguments():
    model, opt = _stepped_optimizer()
    x2, y2 = 2.0 * X64, Y64 + 5.0  # a new batch of the same shapes
    start = raw_params(model)
    before = COUNTER.read()
    loss = opt.minimize_step(model, counted_mse, x2, y2)
    np.testing.assert_allclose(float(loss), float(raw_mse(start, x2, y2)), rtol=RTOL64)
    assert COUNTER.read() - before == _searched(opt) + 1
    # One element changed is a new batch too.
    y3 = y2.at[3, 0].add(1e-3)
    start = raw_params(model)
    loss = opt.minimize_step(model, counted_mse, x2, y3)
    np.testing.assert_allclose(float(loss), float(raw_mse(start, x2, y3)), rtol=RTOL64)


def test_minimize_step_re_evaluates_after_update_and_a_new_loss_function():
    model, opt = _stepped_optimizer()

    @nnx.jit
    def own_step(model, opt):  # a step of update()'s own, as in flax code
        loss, grads = nnx.value_and_grad(mse)(model)
        opt.update(model, grads, value=loss, value_fn=mse)

    own_step(model, opt)
    start = raw_params(model)
    loss = opt.minimize_step(model, counted_mse, X64, Y64)
    np.testing.assert_allclose(float(loss), float(raw_mse(start)), rtol=RTOL64)

    def doubled(m, x, y):
        return 2.0 * mse(m, x, y)

    start = raw_params(model)
    loss = opt.minimize_step(model, doubled, X64, Y64)
    np.testing.assert_allclose(float(loss), 2 * float(raw_mse(start)), rtol=RTOL64)


def test_an_optimizer_of_another_model_is_rejected():
    _, opt = _stepped_optimizer(steps=1)

    class Wider(MLP):
        def __init__(self):
            super().__init__()
            self.l1 = nnx.Linear(2, 5, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
            self.l2 = nnx.Linear(5, 1, param_dtype=jnp.float64, rngs=nnx.Rngs(1))

    other = Wider()
    kept = raw_params(other)
    with pytest.raises(ValueError, match=r"Optimizer.minimize_step: model does not"):
        opt.minimize_step(other, counted_mse, X64, Y64)
    grads = nnx.grad(mse)(other)
    with pytest.raises(ValueError, match=r"Optimizer.update: model does not match"):
        opt.update(other, grads, value=mse(other), value_fn=mse)
    assert_tree_close(raw_params(other), kept, 0.0)  # left untouched


@pytest.mark.parametrize("make_tx", [lambda: optax.adam(1e-2), nnxopt.lbfgs])
def test_grads_of_another_dtype_are_rejected(make_tx):
    model = MLP(jnp.float32)
    opt = nnxopt.Optimizer(model, make_tx(), wrt=nnx.Param)
    kept = raw_params(model)
    loss, grads = nnx.value_and_grad(mse)(model)
    grads64 = jax.tree.map(lambda g: g.astype(jnp.float64), grads)
    with pytest.raises(TypeError, match=r"Optimizer\.update: grads must have the "
                       r"dtypes.*is float64 for a float32 parameter"):  # fmt: skip
        opt.update(model, grads64, value=loss, value_fn=mse)
    assert_tree_close(raw_params(model), kept, 0.0)
