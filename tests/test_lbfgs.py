"""Tests of nnxopt.lbfgs against independent references.

References: a dense inverse-Hessian matrix (numpy, float64), optax.lbfgs step for
step, scipy L-BFGS-B evaluation counts, closed-form secant pairs.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import nnxopt
from nnxopt import _compact, _memory
from nnxopt._lbfgs import LbfgsState, lbfgs, two_loop_recursion
from nnxopt._status import SearchStatus
from nnxopt._tree import COND_SIZE

RTOL_F64 = 1e-12  # round-off between two float64 implementations of one formula
GTOL = 1e-8  # ||g||_inf at which a float64 solve counts as converged
MAX_NFEV_RATIO = 1.5  # nnxopt evaluations / scipy L-BFGS-B evaluations


# --- problems -------------------------------------------------------------------


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def rosenbrock_np(x):
    value = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    grad = np.array(
        [-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)]
    )
    return value, grad


def rosenbrock_walled(x):
    """Rosenbrock, NaN (value and gradient) outside a disc the first trial leaves."""
    r2 = jnp.sum((x - jnp.array([0.0, -5.0])) ** 2)
    return rosenbrock(x) + 0.0 * jnp.sqrt(6.25**2 - r2)


def pseudo_huber_walled(x):
    """sqrt(1 + x^2): Newton steps overshoot far away; NaN beyond |x| = 3."""
    return jnp.sum(jnp.sqrt(1 + x**2) + 0.0 * jnp.sqrt(9.0 - x**2))


class Counter:
    def __init__(self):
        self.n = 0
        self.nonfinite = 0

    def bump(self, value):
        self.n += 1
        self.nonfinite += int(not np.isfinite(value))


def counted(fn, counter):
    def wrapped(x):
        value = fn(x)
        jax.debug.callback(counter.bump, value)
        return value

    return wrapped


# --- solve loop, shared jitted steps ----------------------------------------------


def optax_zoom():
    """The line search optax.lbfgs runs by default."""
    return optax.scale_by_zoom_linesearch(
        max_linesearch_steps=20, initial_guess_strategy="one"
    )


@functools.cache
def solver(name: str):
    """Return (optimizer, counter, jitted value_and_grad, jitted step) once."""
    opts = {
        "nnx": (lbfgs, rosenbrock),
        # optax's own zoom search on both sides: the preconditioners are compared
        "nnx_optax_zoom": (
            functools.partial(lbfgs, linesearch=optax_zoom()),
            rosenbrock,
        ),
        "optax": (optax.lbfgs, rosenbrock),
        "nnx_walled": (
            functools.partial(lbfgs, linesearch=optax_zoom()),
            rosenbrock_walled,
        ),
        "nnx_huber_lr1": (
            functools.partial(lbfgs, learning_rate=1.0),
            pseudo_huber_walled,
        ),
        "optax_huber_lr1": (
            functools.partial(optax.lbfgs, learning_rate=1.0, linesearch=None),
            pseudo_huber_walled,
        ),
    }
    make, fn = opts[name]
    counter = Counter()
    f = counted(fn, counter)
    opt = make()
    return opt, counter, *_jitted(opt, f, search="lr1" not in name)


def _jitted(opt, f, search=True):
    """Jitted ``vg(x, state) -> (value, grad)`` and ``step(x, state, value,
    grad) -> (x, state)`` of ``opt`` on ``f``."""
    if search:
        vg = jax.jit(optax.value_and_grad_from_state(f))
    else:  # a fixed step: nothing to reuse from the state
        vg = jax.jit(lambda x, state: jax.value_and_grad(f)(x))

    @jax.jit
    def step(x, state, value, grad):
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(x, updates), state

    return vg, step


def solve(name, x0, maxiter, gtol=0.0):
    """Hand-written optax loop; returns the iterates, states, gradient norms, nfev."""
    opt, counter, vg, step = solver(name)
    jax.effects_barrier()
    counter.n = counter.nonfinite = 0
    x, state = x0, opt.init(x0)
    xs, states, gnorms = [x], [state], []
    for _ in range(maxiter):
        value, grad = vg(x, state=state)
        gnorms.append(float(jnp.max(jnp.abs(grad))))
        if gnorms[-1] < gtol:
            break
        x, state = step(x, state, value, grad)
        xs.append(x)
        states.append(state)
    jax.effects_barrier()
    return xs, states, gnorms, counter.n


X0 = jnp.array([-1.2, 1.0])


# --- the two-loop recursion -----------------------------------------------------


def dense_inverse_hessian(pairs, gamma, n):
    """N&W eq. (7.19): H <- V^T H V + rho s s^T, oldest pair first."""
    h = gamma * np.eye(n)
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        v = np.eye(n) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h


# reorder: small memories are put in newest-first order once and scanned;
# larger ones (above nnxopt._memory.REORDER_SIZE elements) are indexed per pair.
@pytest.mark.parametrize("reorder", [True, False])
@pytest.mark.parametrize("num_pairs", [0, 3, 5])
def test_two_loop_equals_dense_inverse_hessian(num_pairs, reorder, monkeypatch):
    if not reorder:
        monkeypatch.setattr(_memory, "REORDER_SIZE", 0)
    m, n, gamma = 5, 7, 0.37
    rng = np.random.default_rng(num_pairs)
    a = rng.normal(size=(n, n))
    a = a @ a.T + n * np.eye(n)  # y = A s: every pair has s·y > 0
    pairs = [(s, a @ s) for s in rng.normal(size=(num_pairs, n))]
    g = rng.normal(size=n)
    # The ring buffer wraps: pair j lives in slot (start + j) % m.
    start = 3
    s_mem, y_mem, rho = np.zeros((m, n)), np.zeros((m, n)), np.zeros(m)
    for j, (s, y) in enumerate(pairs):
        slot = (start + j) % m
        s_mem[slot], y_mem[slot], rho[slot] = s, y, 1 / (s @ y)
    memory_idx = (start + num_pairs) % m
    split = {"a": slice(0, 3), "b": slice(3, n)}  # a pytree with two leaves
    tree = lambda v: {k: jnp.asarray(v[..., sl]) for k, sl in split.items()}  # noqa: E731
    got = two_loop_recursion(
        tree(g),
        tree(s_mem),
        tree(y_mem),
        jnp.asarray(rho),
        jnp.asarray(gamma),
        jnp.asarray(memory_idx, jnp.int32),
    )
    got = np.concatenate([np.asarray(got["a"]), np.asarray(got["b"])])
    want = dense_inverse_hessian(pairs, gamma, n) @ g
    np.testing.assert_allclose(got, want, rtol=RTOL_F64 * 100, atol=0)


@pytest.mark.parametrize("num_pairs", [0, 3, 5])
def test_compact_form_equals_dense_inverse_hessian(num_pairs):
    # Same memory as above, plus a discarded slot (weight 0) that must take no
    # part: the Gram matrices and products are given by slot, explicitly.
    m, n, gamma = 5, 7, 0.37
    rng = np.random.default_rng(10 + num_pairs)
    a = rng.normal(size=(n, n))
    a = a @ a.T + n * np.eye(n)
    pairs = [(s, a @ s) for s in rng.normal(size=(num_pairs, n))]
    g = rng.normal(size=n)
    start = 3
    s_mem, y_mem = rng.normal(size=(m, n)), rng.normal(size=(m, n))  # junk
    rho = np.zeros(m)
    for j, (s, y) in enumerate(pairs):
        slot = (start + j) % m
        s_mem[slot], y_mem[slot], rho[slot] = s, y, 1 / (s @ y)
    if num_pairs == 5:  # discard the oldest pair: H is built from the others
        rho[start] = 0.0
        pairs = pairs[1:]
    memory_idx = (start + num_pairs) % m
    gram = jnp.asarray(np.stack([s_mem @ y_mem.T, y_mem @ y_mem.T]))
    now = jnp.asarray(np.stack([s_mem @ g, y_mem @ g]))
    split = {"a": slice(0, 3), "b": slice(3, n)}
    tree = lambda v: {k: jnp.asarray(v[..., sl]) for k, sl in split.items()}  # noqa: E731
    got = _compact.apply(
        tree(g),
        (tree(s_mem), tree(y_mem)),
        jnp.asarray(rho),
        gram,
        now,
        jnp.asarray(gamma),
        jnp.asarray(memory_idx, jnp.int32),
    )
    got = np.concatenate([np.asarray(got["a"]), np.asarray(got["b"])])
    want = dense_inverse_hessian(pairs, gamma, n) @ g
    np.testing.assert_allclose(got, want, rtol=RTOL_F64 * 100, atol=0)


def _hand_loop(opt, f, x0, steps, gtol=0.0, search=True):
    """Jitted ``opt`` steps on ``f`` from ``x0``; returns the iterates and states."""
    vg, step = _jitted(opt, f, search)
    x, state = x0, opt.init(x0)
    xs, states = [x], [state]
    for _ in range(steps):
        value, grad = vg(x, state=state)
        if float(jnp.max(jnp.abs(grad))) < gtol:
            break
        x, state = step(x, state, value, grad)
        xs.append(x)
        states.append(state)
    return xs, states


def test_compact_gram_matrices_equal_the_memory_products(monkeypatch):
    # The compact form keeps S'Y and Y'Y from the products the direction needs
    # (S'y = S'g - S'g_prev): checked against products of the stored pairs
    # after every step of a fixed-step run that skips pairs (it starts where
    # the double well is concave).
    monkeypatch.setattr(_compact, "COMPACT_SIZE", 0)  # any memory is compact
    n = 12
    c = jnp.linspace(0.5, 2.0, n)
    f = lambda x: jnp.sum(x**4 / 4 - c * x**2 / 2)  # noqa: E731
    x0 = jnp.linspace(0.05, 0.3, n)
    opt = lbfgs(memory_size=4, learning_rate=0.7)
    _, states = _hand_loop(opt, f, x0, 40, search=False)
    last = states[-1]
    assert last.gram_memory.shape == (2, 4, 4)
    assert int(last.lbfgs_info.num_skipped) > 0
    checked = 0
    for st in states[1:]:
        w = np.asarray(st.weights_memory)
        if int(st.num_pairs) == 0:
            continue
        s_mem = np.asarray(st.diff_params_memory)
        y_mem = np.asarray(st.diff_updates_memory)
        g = np.asarray(st.updates)
        scale = np.max(np.abs(s_mem @ y_mem.T)) + np.max(np.abs(y_mem @ y_mem.T))
        order = (int(st.memory_idx) + np.arange(4)) % 4  # oldest first
        used = order[w[order] != 0]
        for a, i in enumerate(used):
            for j in used[a:]:  # pair i no newer than pair j
                np.testing.assert_allclose(
                    st.gram_memory[0, i, j], s_mem[i] @ y_mem[j], atol=1e-12 * scale
                )
            for j in used:
                np.testing.assert_allclose(
                    st.gram_memory[1, i, j], y_mem[i] @ y_mem[j], atol=1e-12 * scale
                )
        np.testing.assert_allclose(
            st.anchor_products, np.stack([s_mem @ g, y_mem @ g]), rtol=1e-12, atol=1e-14
        )
        checked += 1
    assert checked > 20


def test_compact_form_takes_the_two_loop_iterates(monkeypatch):
    # Above COMPACT_SIZE the direction comes from the compact form: the same
    # matrix as the two-loop recursion, so the same float64 iterates up to
    # round-off. Measured on this convex problem: 5e-16 relative over the
    # first 40 steps, 8e-12 at step 45 as the gradient nears its rounding
    # floor (about 1e-7 here, where the two runs then wander apart), so the
    # runs stop at a gradient of 1e-5; a wrong matrix moves the iterates by
    # far more than 1e-9.
    n = 30
    d = jnp.logspace(0, 2, n)
    f = lambda x: 0.5 * jnp.sum(d * x**2) + 0.1 * jnp.sum(x**4) - jnp.sum(x)  # noqa: E731
    runs = {}
    for size in (10**9, 0):
        monkeypatch.setattr(_compact, "COMPACT_SIZE", size)
        runs[size] = _hand_loop(lbfgs(), f, jnp.zeros(n), 200, gtol=1e-5)
    (xs_two, st_two), (xs_cmp, st_cmp) = runs[10**9], runs[0]
    assert st_two[-1].gram_memory is None
    assert st_cmp[-1].gram_memory.shape == (2, 10, 10)
    assert len(xs_cmp) == len(xs_two) > 20
    np.testing.assert_allclose(np.stack(xs_cmp), np.stack(xs_two), rtol=1e-9, atol=0)


def _loop_body_copies(hlo: str, shapes: tuple[str, ...]) -> list[str]:
    """The ``copy`` instructions of arrays of ``shapes`` in the computations
    that run every iteration: the bodies (and conditions) of the compiled
    program's while loops and whatever they call, fusions excluded."""
    calls = re.compile(r"(?:body|condition|to_apply|calls)=(%[\w.\-]+)")
    branches = re.compile(r"branch_computations=\{([^}]*)\}")
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            name = head.group(1)
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    callees = {
        k: {c for ln in v for c in calls.findall(ln)}
        | {c.strip() for ln in v for b in branches.findall(ln) for c in b.split(",")}
        for k, v in comps.items()
    }
    todo = [
        b
        for v in comps.values()
        for ln in v
        for b in re.findall(r"body=(%[\w.\-]+)", ln)
    ]
    seen: set[str] = set()
    while todo:
        k = todo.pop()
        if k not in seen and k in comps:
            seen.add(k)
            todo.extend(callees[k])
    return [
        ln.strip()
        for k in seen
        for ln in comps[k]
        if " copy(" in ln and any(f"{shape}{{" in ln for shape in shapes)
    ]


@pytest.mark.parametrize("compact", [True, False])
def test_memory_buffers_are_never_copied_in_the_loop(compact, monkeypatch):
    # The O(m n) pair buffers are written in place: a copy per iteration
    # would double the memory traffic of a large solve. XLA has copied them
    # when a read of the buffers was fused with the write of the new pair
    # (the compact form's products, the newest pair's products); the compiled
    # loop of a small solve shows the same structure as a large one.
    if not compact:  # the two-loop recursion, pair by pair (large memories)
        monkeypatch.setattr(_compact, "COMPACT_SIZE", 10**9)
        monkeypatch.setattr(_memory, "REORDER_SIZE", 0)
    params = {"w": jnp.zeros((100, 700), jnp.float32), "b": jnp.zeros(300, jnp.float32)}
    f = lambda p: jnp.sum((p["w"] - 1) ** 2) + jnp.sum(jnp.cos(p["b"]))  # noqa: E731
    run = jax.jit(lambda p: nnxopt.solve(f, p, maxiter=5, tx=lbfgs(memory_size=9)))
    hlo = run.lower(params).compile().as_text()
    shapes = ("f32[9,100,700]", "f32[9,300]")
    assert any(shape in hlo for shape in shapes)
    assert _loop_body_copies(hlo, shapes) == []
    assert ("f32[2,9,9]" in hlo) == compact  # the Gram matrices


# --- against optax.lbfgs, scipy ----------------------------------------------------


def test_same_iterates_as_optax_lbfgs_when_no_pair_is_skipped():
    xs_nnx, states, *_ = solve("nnx_optax_zoom", X0, maxiter=20)
    xs_optax, *_ = solve("optax", X0, maxiter=20)
    assert int(states[-1].lbfgs_info.num_skipped) == 0
    assert int(states[-1].lbfgs_info.num_resets) == 0
    # The two are different compiled programs, and which multiply-adds XLA
    # contracts into FMAs depends on the CPU: they agree to round-off at first
    # (1e-16 relative over the first 5 steps wherever measured) and
    # Rosenbrock's valley then amplifies that round-off, about tenfold per
    # step (measured on an AVX-512 AMD EPYC: 2e-16 at step 5, 3e-12 at step
    # 8, 8e-9 at step 18; below 1e-10 on the CPUs of earlier runs). A wrong
    # preconditioner moves the iterates far more than 1e-6.
    xs_nnx, xs_optax = np.stack(xs_nnx), np.stack(xs_optax)
    np.testing.assert_allclose(xs_nnx[:6], xs_optax[:6], rtol=1e-13)
    np.testing.assert_allclose(xs_nnx, xs_optax, rtol=1e-6)
    assert not np.allclose(xs_nnx[0], xs_nnx[-1])


def test_rosenbrock_evaluations_comparable_to_scipy():
    xs, _, gnorms, nfev = solve("nnx", X0, maxiter=200, gtol=GTOL)
    assert gnorms[-1] < GTOL
    np.testing.assert_allclose(xs[-1], [1.0, 1.0], atol=1e-7)
    ref = scipy.optimize.minimize(
        rosenbrock_np,
        np.array([-1.2, 1.0]),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": GTOL, "ftol": 0.0, "maxiter": 1000},
    )
    assert np.max(np.abs(ref.jac)) < GTOL, ref.message
    ratio = nfev / ref.nfev
    print(
        f"rosenbrock nfev: nnxopt {nfev}, scipy L-BFGS-B {ref.nfev}, ratio {ratio:.2f}"
    )
    assert ratio <= MAX_NFEV_RATIO


# --- safeguards ---------------------------------------------------------------------


def _fixed_steps(opt, f, x0, num_steps=2):
    """Updates with a fixed step; returns the iterates and last state."""
    update = jax.jit(
        lambda g, s, x, v: opt.update(g, s, x, value=v, grad=g, value_fn=f)
    )
    xs, state = [x0], opt.init(x0)
    for _ in range(num_steps):
        value, grad = jax.value_and_grad(f)(xs[-1])
        updates, state = update(grad, state, xs[-1], value)
        xs.append(optax.apply_updates(xs[-1], updates))
    return xs, state


def _two_fixed_steps(opt, f, x0):
    xs, state = _fixed_steps(opt, f, x0)
    return xs[-1], state


def test_negative_curvature_pair_is_skipped_where_optax_stores_it():
    # sin is concave on (0, pi): the first step from x = 1 (to 1 - cos 1) has
    # s·y = (x1 - x0) (cos x1 - cos x0) < 0.
    f = lambda x: jnp.sum(jnp.sin(x))  # noqa: E731
    x0 = jnp.array([1.0])
    s = -np.cos(1.0)
    y = np.cos(1.0 + s) - np.cos(1.0)
    assert s * y < 0
    x_nnx, st = _two_fixed_steps(lbfgs(learning_rate=1.0), f, x0)
    assert int(st.num_pairs) == 0
    assert int(st.lbfgs_info.num_skipped) == 1
    assert not np.any(np.asarray(st.weights_memory))
    assert not np.any(np.asarray(st.diff_params_memory))
    # nnxopt's second step: the empty-memory step -g * min(1, 1/|g|), downhill.
    g1 = np.cos(1.0 + s)
    np.testing.assert_allclose(x_nnx, [1.0 + s - g1 * min(1, 1 / abs(g1))], rtol=1e-14)
    x_opt, st_opt = _two_fixed_steps(
        optax.lbfgs(learning_rate=1.0, linesearch=None), f, x0
    )
    rho_optax = np.asarray(st_opt[0].weights_memory)
    np.testing.assert_allclose(rho_optax[rho_optax != 0], [1 / (s * y)], rtol=1e-12)
    assert f(x_opt) > f(x0 + s)  # optax's H = s/y < 0 turns the step uphill
    assert f(x_nnx) < f(x0 + s)


@pytest.mark.parametrize(("curvature", "stored"), [(2.0, False), (0.5, True)])
def test_curvature_eps_threshold(curvature, stored):
    # On f = c x^2 / 2 every pair has s·y / y·y = 1 / c, against eps = 1.
    f = lambda x: 0.5 * curvature * jnp.sum(x**2)  # noqa: E731
    _, st = _two_fixed_steps(
        lbfgs(learning_rate=0.5, curvature_eps=1.0), f, jnp.array([3.0])
    )
    assert int(st.num_pairs) == int(stored)
    assert int(st.lbfgs_info.num_skipped) == int(not stored)


def _assert_finite_run(states, xs):
    for x, st in zip(xs, states, strict=True):
        assert np.all(np.isfinite(x))
        memory = (st.diff_params_memory, st.diff_updates_memory, st.weights_memory)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(memory))


def test_nan_wall_zoom_solve_continues():
    xs, states, gnorms, _ = solve("nnx_walled", X0, maxiter=200, gtol=GTOL)
    assert solver("nnx_walled")[1].nonfinite > 0  # the line search hit the wall
    _assert_finite_run(states, xs)
    assert gnorms[-1] < GTOL
    np.testing.assert_allclose(xs[-1], [1.0, 1.0], atol=1e-7)


def test_nan_trial_points_are_shrunk_with_a_fixed_step():
    # With unit steps and no line search, the quasi-Newton step from x = 1.57
    # lands at x = -7.7, where the loss is NaN.
    x0 = jnp.array([2.5])
    xs, states, gnorms, _ = solve("nnx_huber_lr1", x0, maxiter=60, gtol=GTOL)
    _assert_finite_run(states, xs)
    assert int(states[-1].lbfgs_info.num_nonfinite) > 0
    assert gnorms[-1] < GTOL
    # optax stores the NaN pair and never recovers.
    xs_optax, *_ = solve("optax_huber_lr1", x0, maxiter=6)
    assert not np.all(np.isfinite(xs_optax[-1]))


def test_repeated_nan_trials_reset_memory_and_return_to_last_finite_point():
    # f = (x - 5)^2 / 10, NaN beyond |x| = 0.8. By hand, from x = 0 with unit
    # steps: trial 1 (NaN), shrink to 0.5; the secant (Newton) step goes to 5;
    # three halvings (2.75, 1.625, 1.0625) stay NaN, the 4th NaN trial gives up:
    # back to 0.5, memory reset, radius 0.5 * 0.5625; the gradient step of that
    # length: 0.78125.
    f = lambda x: jnp.sum(0.1 * (x - 5) ** 2 + 0.0 * jnp.sqrt(0.64 - x**2))  # noqa: E731
    xs, state = _fixed_steps(lbfgs(learning_rate=1.0), f, jnp.array([0.0]), 8)
    want = [0.0, 1.0, 0.5, 5.0, 2.75, 1.625, 1.0625, 0.5, 0.78125]
    np.testing.assert_allclose(np.concatenate(xs), want, rtol=1e-14)
    info = state.lbfgs_info
    assert (int(info.num_nonfinite), int(info.num_resets)) == (5, 1)
    _assert_finite_run([state], xs[-1:])


# pad: zeros appended to x; with COND_SIZE of them the fallback direction is
# chosen by a lax.cond (nnxopt._tree.choose_lazy) instead of a select.
@pytest.mark.parametrize("pad", [0, COND_SIZE])
def test_bad_direction_falls_back_to_scaled_gradient(pad):
    opt = lbfgs(learning_rate=1.0)
    f = lambda x: 0.5 * jnp.sum(x**2)  # noqa: E731
    x1 = jnp.zeros(2 + pad).at[:2].set(jnp.array([0.5, 1.0]))
    state = opt.init(x1)
    # A stored pair with negative curvature makes H indefinite (optax would keep
    # it); the incoming pair s = (0, -1), y = (0, 1) is skipped, so it stays.
    g = jax.grad(f)(x1)
    e1 = jnp.zeros_like(x1).at[1].set(1.0)
    state = state._replace(
        count=jnp.ones((), jnp.int32),
        params=x1 + e1,
        updates=g - e1,
        diff_params_memory=jnp.zeros((10, 2 + pad)).at[0, 0].set(1.0),
        diff_updates_memory=jnp.zeros((10, 2 + pad)).at[0, 0].set(-1.0),
        weights_memory=jnp.zeros(10).at[0].set(-1.0),
        memory_idx=jnp.ones((), jnp.int32),
        num_pairs=jnp.ones((), jnp.int32),
    )
    # By hand: H g = (-0.5, -1) = -g, so the L-BFGS direction is uphill.
    updates, new = opt.update(g, state, x1, value=f(x1), grad=g, value_fn=f)
    gn = np.linalg.norm(g)
    np.testing.assert_allclose(updates, -np.asarray(g) * min(1, 1 / gn), rtol=1e-14)
    assert int(new.num_pairs) == 0 and int(new.lbfgs_info.num_resets) == 1
    assert int(new.lbfgs_info.num_skipped) == 1


class _FakeSearchState(NamedTuple):
    learning_rate: jax.Array
    value: jax.Array
    grad: Any
    status: jax.Array


def _fake_search(status):
    """A line search taking half the step and reporting a fixed status."""

    def init(params):
        zero = jnp.zeros((), jnp.float64)
        return _FakeSearchState(
            zero, zero + jnp.inf, params, jnp.int32(SearchStatus.SUCCESS)
        )

    def update(updates, state, params, *, value, grad, value_fn):
        del params, value_fn
        lr = jnp.asarray(0.5)
        new = _FakeSearchState(lr, value, grad, jnp.int32(status))
        return optax.tree.scale(lr, updates), new

    return optax.GradientTransformationExtraArgs(init, update)


@pytest.mark.parametrize(
    ("status", "resets"), [(SearchStatus.SUCCESS, 0), (SearchStatus.NOT_DESCENT, 1)]
)
def test_linesearch_status_resets_memory(status, resets):
    opt = lbfgs(linesearch=_fake_search(status))
    f = lambda x: jnp.sum(jnp.array([1.0, 4.0]) * x**2)  # noqa: E731
    _, state = _fixed_steps(opt, f, jnp.array([1.0, 1.0]), 3)
    # Update 2 sees NOT_DESCENT with an empty memory (nothing to discard), then
    # stores its pair; update 3 discards it and stores its own.
    assert int(state.lbfgs_info.num_resets) == resets
    assert int(state.num_pairs) == (1 if resets else 2)


# --- optax plumbing -----------------------------------------------------------------


def _avals(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x), x.weak_type), tree)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_chain_no_retrace_and_init_update_types(dtype):
    opt = optax.chain(optax.clip_by_global_norm(1e3), lbfgs())
    f = lambda p: rosenbrock(jnp.stack([p["a"][0], p["b"]]))  # noqa: E731
    params = {"a": jnp.array([-1.2], dtype), "b": jnp.array(1.0, dtype)}
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        value, grad = optax.value_and_grad_from_state(f)(params, state=state)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=f
        )
        return optax.apply_updates(params, updates), state

    state0 = opt.init(params)
    p, state = params, state0
    for _ in range(3):
        p, state = step(p, state)
    assert len(traces) == 1
    assert jax.tree.structure(state0) == jax.tree.structure(state)
    assert _avals(state0) == _avals(state)
    assert _avals(p) == _avals(params)
    assert state[1].weights_memory.dtype == dtype
    # The clip is inactive (|g| < 1e3), so the chain follows the plain solver.
    if dtype == jnp.float64:
        xs, *_ = solve("nnx", X0, maxiter=3)
        np.testing.assert_allclose([p["a"][0], p["b"]], xs[3], rtol=1e-12)


def test_init_is_a_valid_state():
    state = lbfgs(memory_size=3).init(jnp.zeros((2, 2), jnp.float32))
    assert isinstance(state, LbfgsState)
    assert state.diff_params_memory.shape == (3, 2, 2)
    assert state.count.dtype == jnp.int32


def test_argument_errors():
    with pytest.raises(ValueError, match="memory_size must be >= 1"):
        lbfgs(memory_size=0)
    with pytest.raises(TypeError, match="memory_size must be an int"):
        lbfgs(memory_size=2.0)
    with pytest.raises(ValueError, match="curvature_eps"):
        lbfgs(curvature_eps=-1.0)
    with pytest.raises(ValueError, match="not both"):
        lbfgs(learning_rate=1.0, linesearch=optax.scale_by_zoom_linesearch(5))
    with pytest.raises(TypeError, match="linesearch must be"):
        lbfgs(linesearch="zoom")
    opt = lbfgs()
    x = jnp.zeros(2)
    with pytest.raises(TypeError, match="value_fn"):
        opt.update(x, opt.init(x), x, value=0.0, grad=x)
