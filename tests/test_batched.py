"""``jax.vmap`` of ``nnxopt.solve``: every member is its own solve.

Reference: each member solved alone in the same process (nit, nfev and status
exactly; params to round-off, see ``BATCH_ATOL``), plus the closed form of the
quadratics. One compiled batch serves the quadratics, the Rosenbrock starts and
the failing members (one objective family, one shape), to keep the suite cheap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nnxopt
from nnxopt import Status, solve
from nnxopt import problems as P

N = 6
#: The batched loop evaluates the same formulas as the single one, but XLA
#: compiles batched dot products (and fuses them) differently, so they round
#: differently; counts stay exactly equal. Measured up to 7e-10 on the
#: quadratics (2e-10 measured, 2e-9 leaves a margin for other CPUs).
BATCH_ATOL = 2e-9
#: Rosenbrock members take the same iterations, but the round-off above grows
#: along the curved valley: they end at different points of the flat bottom
#: where ftol stops (within about 1e-5 of the minimum; measured 2.4e-5 apart).
ROSEN_ATOL = 1e-4
ROSEN = P.extended_rosenbrock(n=N)


def family(x, a, b, c):
    """A quadratic ``x a x / 2 - b x`` plus ``c`` times extended Rosenbrock."""
    return 0.5 * x @ a @ x - b @ x + c * ROSEN.fn(x)


def run(x0, a, b, c):
    return solve(family, x0, a, b, c)


def _members():
    rng = np.random.default_rng(0)
    x0, a, b, c = [], [], [], []
    for _ in range(64):  # strongly convex quadratics, condition 1 to 1e4
        q, _ = np.linalg.qr(rng.normal(size=(N, N)))
        eig = np.geomspace(1.0, 10 ** rng.uniform(0, 4), N)
        x0.append(np.zeros(N)), a.append(q @ np.diag(eig) @ q.T)
        b.append(rng.normal(size=N)), c.append(0.0)
    for _ in range(8):  # Rosenbrock from random starts
        x0.append(rng.normal(size=N) * 1.5), a.append(np.zeros((N, N)))
        b.append(np.zeros(N)), c.append(1.0)
    # two failures: non-finite data, a non-finite start
    x0.append(np.zeros(N)), a.append(np.eye(N)), b.append(np.full(N, np.nan))
    c.append(0.0)
    x0.append(np.full(N, np.inf)), a.append(np.eye(N)), b.append(np.ones(N))
    c.append(0.0)
    return tuple(jnp.asarray(np.array(v)) for v in (x0, a, b, c))


@pytest.fixture(scope="module")
def batch():
    members = _members()
    return members, jax.vmap(run)(*members)  # jit(vmap): test_solve and NNX below


def test_each_member_equals_its_own_solve(batch):
    members, sol = batch
    assert sol.params.shape == (74, N) and sol.nit.shape == (74,)
    alone = jax.jit(run)  # one compiled single solve (the eager one is the same loop)
    for i in range(74):
        one = alone(*(m[i] for m in members))
        got = (int(sol.nit[i]), int(sol.nfev[i]), int(sol.njev[i]), int(sol.status[i]))
        assert got == (int(one.nit), int(one.nfev), int(one.njev), int(one.status)), i
        atol = BATCH_ATOL if i < 64 else ROSEN_ATOL
        np.testing.assert_allclose(sol.params[i], one.params, rtol=0, atol=atol)
        np.testing.assert_allclose(sol.fun[i], one.fun, rtol=1e-9, atol=atol)
        # the per-call history: written only while the member ran
        np.testing.assert_array_equal(sol.history.nfev[i], one.history.nfev)
        if not 64 <= i < 72:  # Rosenbrock: round-off moves the iterates (above)
            np.testing.assert_allclose(
                sol.history.value[i], one.history.value, rtol=1e-9, atol=atol
            )


def test_members_stop_at_their_own_convergence(batch):
    (_, a, b, _), sol = batch
    nit = np.asarray(sol.nit)
    assert nit[:64].min() < nit[:64].max()  # different lengths, not the slowest
    # the quadratics: converged, at the closed form within |g|_2 / lambda_min
    for i in range(64):
        assert bool(sol.success[i]), Status(int(sol.status[i]))
        a_i = np.asarray(a[i])
        x_star = np.linalg.solve(a_i, np.asarray(b[i]))
        bound = np.sqrt(N) * float(sol.grad_norm[i]) / np.linalg.eigvalsh(a_i)[0]
        assert np.linalg.norm(np.asarray(sol.params[i]) - x_star) <= bound * 1.001
    for i in range(64, 72):  # Rosenbrock: success and its minimum (ones)
        assert bool(sol.success[i]), Status(int(sol.status[i]))
        np.testing.assert_allclose(sol.params[i], np.ones(N), atol=1e-3)
    for i in (72, 73):  # the failures report it and keep finite parameters
        assert int(sol.status[i]) == Status.NON_FINITE and int(sol.nit[i]) == 0
    assert np.all(np.isfinite(np.asarray(sol.params[:72])))


def test_batch_stages_give_each_member_the_same_solve(batch):
    # Two stages: the 74 members run until at most 37 still run, which go on
    # gathered into a batch of 37. b and c are captured by fun's closure here
    # (values the stages must gather too), a passed as an argument. Measured
    # bit-identical to the one-stage batch; the tolerances are the batch's own
    # (another CPU may compile the smaller batch's products differently).
    members, sol = batch

    def staged(x0, a, b, c):
        return solve(lambda x, a: family(x, a, b, c), x0, a, batch_stages=2)

    batched = jax.jit(jax.vmap(staged))
    assert "37x6xf64" in batched.lower(*members).as_text()  # the second stage
    got = batched(*members)
    for field in ("nit", "nfev", "njev", "status"):
        np.testing.assert_array_equal(getattr(got, field), getattr(sol, field))
    np.testing.assert_array_equal(got.history.nfev, sol.history.nfev)
    for i, atol in ((slice(0, 64), BATCH_ATOL), (slice(64, 74), ROSEN_ATOL)):
        np.testing.assert_allclose(got.params[i], sol.params[i], rtol=0, atol=atol)
        np.testing.assert_allclose(got.fun[i], sol.fun[i], rtol=1e-9, atol=atol)
    np.testing.assert_allclose(
        got.history.value[:64], sol.history.value[:64], rtol=1e-9, atol=BATCH_ATOL
    )
    # the second stage ran: over half the members needed fewer steps
    nit = np.asarray(sol.nit)
    assert np.sort(nit)[-37] < nit.max()
    # unbatched, batch_stages changes nothing (the same loop, bit for bit)
    one, alone_jit = jax.jit(lambda *m: solve(family, *m, batch_stages=3)), jax.jit(run)
    for i in (0, 70, 72):
        alone = alone_jit(*(m[i] for m in members))
        staged_one = one(*(m[i] for m in members))
        assert int(staged_one.nit) == int(alone.nit)
        np.testing.assert_array_equal(staged_one.params, alone.params)
        np.testing.assert_array_equal(staged_one.history.value, alone.history.value)


@pytest.mark.parametrize(
    ("stages", "error"), [(0, ValueError), (True, TypeError), ("2", TypeError)]
)
def test_bad_batch_stages_is_named(stages, error):
    with pytest.raises(error, match=r"nnxopt\.solve: batch_stages must be"):
        solve(family, jnp.zeros(N), jnp.eye(N), jnp.ones(N), 0.0, batch_stages=stages)


@pytest.mark.slow
def test_vmap_over_params_only():
    starts = jnp.asarray(np.random.default_rng(1).normal(size=(3, N)))
    zero_a, zero_b = jnp.zeros((N, N)), jnp.zeros(N)
    vrun = jax.jit(jax.vmap(run, in_axes=(0, None, None, None)))
    sol = vrun(starts, zero_a, zero_b, 1.0)
    for i in range(3):
        one = run(starts[i], zero_a, zero_b, 1.0)
        assert (int(sol.nit[i]), int(sol.nfev[i])) == (int(one.nit), int(one.nfev))
        np.testing.assert_allclose(sol.params[i], one.params, atol=ROSEN_ATOL)


# ---------------------------------------------------------------------------
# Bad input: clear errors at trace time.


def quad(x, c):
    return jnp.sum((x - c) ** 2)


CS = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("name", ["maxiter", "gtol", "ftol", "maxfev"])
def test_vmapped_static_option_is_named(name):
    values = jnp.asarray([10, 20]) if name in ("maxiter", "maxfev") else CS[:, 0]
    with pytest.raises(TypeError, match=rf"nnxopt\.solve: {name} is a traced value"):
        jax.vmap(lambda v: solve(quad, jnp.zeros(2), CS[0], **{name: v}))(values)


def test_vmapped_transform_is_named():
    with pytest.raises(TypeError, match=r"nnxopt\.solve: tx captures a traced value"):
        jax.vmap(lambda lr: solve(quad, jnp.zeros(2), CS[0], tx=optax.sgd(lr)))(
            jnp.asarray([0.1, 0.2])
        )


@pytest.mark.parametrize("jit_inside", [False, True])
@pytest.mark.parametrize("host", ["callback", "progress"])
def test_callback_under_vmap_is_a_clear_trace_time_error(host, jit_inside):
    option = (
        {"callback": lambda info: None} if host == "callback" else {"progress": True}
    )

    def one(c):
        return solve(quad, jnp.zeros(2), c, maxiter=5, **option).params

    fn = jax.jit(one) if jit_inside else one
    with pytest.raises(TypeError, match=r"callback= and progress= cannot run under"):
        jax.vmap(fn)(CS)


def test_mismatched_batch_sizes():
    with pytest.raises(ValueError, match="inconsistent sizes"):
        jax.vmap(lambda x, c: solve(quad, x, c))(jnp.zeros((3, 2)), CS)


# ---------------------------------------------------------------------------
# NNX: an ensemble created with nnx.vmap, trained member by member in one solve.


def mse(model, x, y):
    return jnp.mean((model(x) - y) ** 2) + 1e-2 * jnp.mean(model.kernel[...] ** 2)


@pytest.mark.slow  # suite time: 13 s
def test_nnx_vmap_ensemble_equals_separate_minimize():
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.normal(size=(2, 16, 2)))
    ys = jnp.asarray(rng.normal(size=(2, 16, 1)))

    @nnx.vmap
    def create(key):
        return nnx.Linear(2, 1, rngs=nnx.Rngs(key), param_dtype=jnp.float64)

    ensemble = create(jax.random.split(jax.random.key(0), 2))
    graphdef, params, rest = nnx.split(ensemble, nnx.Param, ...)
    starts = jax.tree.map(jnp.copy, params)

    def loss(p, x, y):  # one member: its parameters merged into the graph
        return mse(nnx.merge(graphdef, p, rest), x, y)

    sol = jax.jit(jax.vmap(lambda p, x, y: solve(loss, p, x, y)))(params, xs, ys)
    nnx.update(ensemble, sol.params)
    for i in range(2):
        member = nnx.Linear(2, 1, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        nnx.update(member, jax.tree.map(lambda v, i=i: v[i], starts))
        result = nnxopt.minimize(mse, member, xs[i], ys[i])
        assert (result.nit, result.nfev) == (int(sol.nit[i]), int(sol.nfev[i]))
        np.testing.assert_allclose(
            ensemble.kernel[...][i], member.kernel[...], atol=BATCH_ATOL
        )
        # the reference: the normal equations of this ridge problem
        x1 = np.concatenate([np.asarray(xs[i]), np.ones((16, 1))], axis=1)
        reg = np.diag([1e-2 * 16 / 2] * 2 + [0.0])
        w = np.linalg.solve(x1.T @ x1 + reg, x1.T @ np.asarray(ys[i]))
        np.testing.assert_allclose(member.kernel[...], w[:2], atol=1e-5)
