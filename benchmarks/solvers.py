"""Solver adapters: one small class per way of running L-BFGS on a :class:`Task`.

Every adapter has ``setup()`` (untimed: fresh model or initial point) and
``solve(state, flag) -> Outcome`` (timed; ``flag > 0`` turns on the evaluation
counter). Same stopping rule wherever the solver lets us set it: infinity norm
of the gradient ``<= gtol`` or ``maxiter`` iterations; where a peer has no such
rule its nearest equivalent is used and named in :data:`NOTES`.

A peer that is not installed, or an nnxopt API that has not landed yet, raises
:class:`Unavailable` from the constructor; the runner prints one line and skips.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks._tasks import COUNTER, Task


class Unavailable(Exception):
    """The solver cannot run here (missing peer or API); the message says why."""


@dataclasses.dataclass
class Config:
    """Stopping rule shared by all solvers."""

    gtol: float = 1e-8
    ftol: float = 1e-12
    maxiter: int = 1000
    memory_size: int = 10


@dataclasses.dataclass
class Outcome:
    """What a solve returns: the final point and the solver's own counters."""

    x: np.ndarray  # final flat parameters, float64
    nit: int
    own_nfev: int | None = None  # the solver's own evaluation count, if any
    message: str = ""


def _inf_norm(tree: Any) -> jax.Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)]))


class Solver:
    """Base of the adapters: name, applicability and the two calls."""

    name = "?"
    short = "?"  # table column
    flat_only = False  # needs a flat-vector problem (torch)

    def __init__(self, task: Task, cfg: Config):
        self.task, self.cfg = task, cfg

    def setup(self) -> Any:
        """Return the untimed inputs of :meth:`solve` (fresh each call)."""
        return self.task.params0

    def solve(self, state: Any, flag: float) -> Outcome:
        """Run one full solve."""
        raise NotImplementedError


# ---------------------------------------------------------------------------
# scipy and torch (host loops).
# ---------------------------------------------------------------------------


class ScipyLBFGSB(Solver):
    """``scipy.optimize.minimize(method="L-BFGS-B")`` on a jitted value_and_grad."""

    name = "scipy L-BFGS-B"
    short = "scipy"

    def __init__(self, task, cfg):
        super().__init__(task, cfg)
        try:
            import scipy.optimize
        except ImportError as err:
            raise Unavailable("scipy is not installed") from err
        self._minimize = scipy.optimize.minimize
        self._vg = jax.jit(jax.value_and_grad(task.flat_fn))

    def setup(self):
        return self.task.x0_flat

    def solve(self, x0, flag):
        flag = jnp.float32(flag)

        def fun(x):
            f, g = self._vg(jnp.asarray(x, dtype=self.task.dtype), flag)
            return float(f), np.asarray(g, dtype=np.float64)

        res = self._minimize(
            fun,
            x0,
            jac=True,
            method="L-BFGS-B",
            options=dict(
                maxcor=self.cfg.memory_size,
                gtol=self.cfg.gtol,
                ftol=self.cfg.ftol,
                maxiter=self.cfg.maxiter,
                maxfun=10 * self.cfg.maxiter,
            ),
        )
        return Outcome(res.x, int(res.nit), int(res.nfev), str(res.message))


class TorchLBFGS(Solver):
    """``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` in float64, one thread."""

    name = "torch LBFGS"
    short = "torch"
    flat_only = True

    def __init__(self, task, cfg):
        super().__init__(task, cfg)
        if task.torch_fn is None:
            raise Unavailable("no torch formulation (NNX model)")
        try:
            import torch
        except ImportError as err:
            raise Unavailable("torch is not installed") from err
        self.torch = torch
        torch.set_num_threads(1)

    def setup(self):
        return self.task.x0_flat

    def solve(self, x0, flag):
        torch = self.torch
        x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [x],
            lr=1.0,
            max_iter=self.cfg.maxiter,
            max_eval=10 * self.cfg.maxiter,
            tolerance_grad=self.cfg.gtol,
            tolerance_change=self.cfg.ftol,
            history_size=self.cfg.memory_size,
            line_search_fn="strong_wolfe",
        )
        fn = self.task.torch_fn

        def closure():
            opt.zero_grad()
            loss = fn(x)
            loss.backward()
            if flag:
                COUNTER.record(True, loss.item())
            return loss

        opt.step(closure)
        state = opt.state[opt._params[0]]
        return Outcome(
            x.detach().numpy().copy(), int(state["n_iter"]), int(state["func_evals"])
        )


# ---------------------------------------------------------------------------
# optax (hand-written loops) and nnx.Optimizer.
# ---------------------------------------------------------------------------


def _optax_step(task: Task, tx: optax.GradientTransformationExtraArgs):
    def step(params, state, flag):
        fn = functools.partial(task.tree_fn, flag=flag)
        value, grad = optax.value_and_grad_from_state(fn)(params, state=state)
        updates, state = tx.update(
            grad, state, params, value=value, grad=grad, value_fn=fn
        )
        params = optax.apply_updates(params, updates)
        new_grad = optax.tree.get(state, "grad")
        return params, state, _inf_norm(new_grad)

    return step


class OptaxLoop(Solver):
    """``optax.lbfgs()`` stepped from a Python loop (jitted step, host stop test)."""

    name = "optax lbfgs (py loop)"
    short = "optax-py"

    def __init__(self, task, cfg):
        super().__init__(task, cfg)
        self.tx = optax.lbfgs(memory_size=cfg.memory_size)
        self._step = jax.jit(_optax_step(task, self.tx))
        self._init = jax.jit(self.tx.init)

    def solve(self, params, flag):
        flag = jnp.float32(flag)
        state = self._init(params)
        # The first step evaluates at x0; stop if x0 is already stationary.
        gnorm0 = self.task.evaluate(self.task.to_flat(params))[1]
        nit = 0
        if gnorm0 > self.cfg.gtol:
            for nit in range(1, self.cfg.maxiter + 1):  # noqa: B007
                params, state, gnorm = self._step(params, state, flag)
                if float(gnorm) <= self.cfg.gtol:
                    break
        return Outcome(self.task.to_flat(params), nit)


class OptaxWhile(Solver):
    """``optax.lbfgs()`` in one jitted ``lax.while_loop`` (optax's documented loop)."""

    name = "optax lbfgs (while_loop)"
    short = "optax-wl"

    def __init__(self, task, cfg):
        super().__init__(task, cfg)
        tx = optax.lbfgs(memory_size=cfg.memory_size)
        step = _optax_step(task, tx)
        gtol, maxiter = cfg.gtol, cfg.maxiter

        def run(params, flag):
            def cond(carry):
                _, _, k, gnorm = carry
                return (k < maxiter) & (gnorm > gtol)

            def body(carry):
                params, state, k, _ = carry
                params, state, gnorm = step(params, state, flag)
                return params, state, k + 1, gnorm

            g0 = jax.grad(task.tree_fn)(params, 0.0)
            carry = (params, tx.init(params), jnp.int32(0), _inf_norm(g0))
            params, _, k, _ = jax.lax.while_loop(cond, body, carry)
            return params, k

        self._run = jax.jit(run)

    def solve(self, params, flag):
        params, k = self._run(params, jnp.float32(flag))
        return Outcome(self.task.to_flat(params), int(k))


class NNXOptimizer(Solver):
    """Upstream ``nnx.Optimizer(model, optax.lbfgs())`` under ``nnx.jit``.

    The hand-written step users write today: ``nnx.value_and_grad`` of the loss,
    then ``update(..., value=, grad=, value_fn=)`` with a split/merge
    ``value_fn``; the accepted point's value and gradient are recomputed by the
    next step (one evaluation per iteration more than necessary).
    """

    name = "nnx.Optimizer + optax.lbfgs"
    short = "nnx.Opt"

    def __init__(self, task, cfg):
        super().__init__(task, cfg)
        tx = optax.lbfgs(memory_size=cfg.memory_size)
        self.tx = tx
        loss_fn, batch = task.loss_fn, task.batch

        @nnx.jit
        def step(model, optimizer, flag):
            graphdef, _, rest = nnx.split(model, nnx.Param, ...)
            rest = nnx.as_pure(rest)

            def value_fn(params):
                return loss_fn(nnx.merge(graphdef, params, rest), *batch, flag)

            loss, grads = nnx.value_and_grad(loss_fn)(model, *batch, flag)
            optimizer.update(model, grads, value=loss, grad=grads, value_fn=value_fn)
            return _inf_norm(nnx.as_pure(grads))

        self._step = step

    def setup(self):
        model = self.task.make_model()
        return model, nnx.Optimizer(model, self.tx, wrt=nnx.Param)

    def solve(self, state, flag):
        model, optimizer = state
        flag = jnp.float32(flag)
        nit = 0
        # The gradient is that of the point before the step: the loop users
        # write (evaluate, update, look at the numbers) takes one step more.
        for nit in range(1, self.cfg.maxiter + 1):  # noqa: B007
            if float(self._step(model, optimizer, flag)) <= self.cfg.gtol:
                break
        return Outcome(self.task.to_flat(model), nit)


# ---------------------------------------------------------------------------
# jaxopt and optimistix.
# ---------------------------------------------------------------------------


class JaxoptLBFGS(Solver):
    """``jaxopt.LBFGS`` (zoom line search), ``jax.jit(solver.run)``.

    jaxopt stops on the *2-norm* of the gradient (``tol=gtol``).
    """

    name = "jaxopt LBFGS"
    short = "jaxopt"

    def __init__(self, task, cfg):
        super().__init__(task, cfg)
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import jaxopt
        except ImportError as err:
            raise Unavailable("jaxopt is not installed") from err
        solver = jaxopt.LBFGS(
            fun=task.tree_fn,
            maxiter=cfg.maxiter,
            tol=cfg.gtol,
            history_size=cfg.memory_size,
        )
        self._run = jax.jit(solver.run)

    def solve(self, params, flag):
        params, state = self._run(params, jnp.float32(flag))
        return Outcome(
            self.task.to_flat(params), int(state.iter_num), int(state.num_fun_eval)
        )


class OptimistixSolver(Solver):
    """``optimistix.minimise`` with ``LBFGS`` or ``BFGS`` inside ``jax.jit``.

    optimistix has no gradient test: it stops on Cauchy tolerances
    (``rtol=atol=1e-10`` on the change of ``y`` and ``f``).
    """

    algorithm = "LBFGS"

    def __init__(self, task, cfg):
        super().__init__(task, cfg)
        try:
            import optimistix as optx
        except ImportError as err:
            raise Unavailable("optimistix is not installed") from err
        solver = getattr(optx, self.algorithm)(rtol=1e-10, atol=1e-10)

        def run(params, flag):
            sol = optx.minimise(
                task.tree_fn,
                solver,
                params,
                args=flag,
                max_steps=cfg.maxiter,
                throw=False,
            )
            return sol.value, sol.stats["num_steps"], sol.result._value

        self._run = jax.jit(run)

    def solve(self, params, flag):
        params, steps, result = self._run(params, jnp.float32(flag))
        return Outcome(
            self.task.to_flat(params), int(steps), None, f"result={int(result)}"
        )


class OptimistixLBFGS(OptimistixSolver):
    """optimistix ``LBFGS``."""

    name = "optimistix LBFGS"
    short = "optx-L"
    algorithm = "LBFGS"


class OptimistixBFGS(OptimistixSolver):
    """optimistix ``BFGS`` (dense inverse Hessian)."""

    name = "optimistix BFGS"
    short = "optx-B"
    algorithm = "BFGS"


# ---------------------------------------------------------------------------
# nnxopt (lights up when the API lands).
# ---------------------------------------------------------------------------


def _nnxopt():
    try:
        import nnxopt
    except ImportError as err:  # pragma: no cover - the package is the repo
        raise Unavailable(f"nnxopt is not importable: {err}") from err
    return nnxopt


class NnxoptMinimize(Solver):
    """``nnxopt.minimize(loss_fn, model, *batch, flag, tx=...)`` (one compiled loop)."""

    name = "nnxopt.minimize"
    short = "nnxopt"
    linesearch: str | None = None  # name in nnxopt.linesearch, None = default
    bfgs: dict[str, Any] | None = None  # keywords of nnxopt.bfgs, None = lbfgs

    def __init__(self, task, cfg):
        super().__init__(task, cfg)
        nnxopt = _nnxopt()
        if not hasattr(nnxopt, "minimize"):
            raise Unavailable("nnxopt.minimize is not available yet")
        self.minimize = nnxopt.minimize
        self.tx = None
        if self.linesearch is not None:
            search = getattr(getattr(nnxopt, "linesearch", None), self.linesearch, None)
            if search is None or not hasattr(nnxopt, "lbfgs"):
                raise Unavailable(
                    f"nnxopt.lbfgs / nnxopt.linesearch.{self.linesearch} not available"
                )
            self.tx = nnxopt.lbfgs(memory_size=cfg.memory_size, linesearch=search())
        if self.bfgs is not None:
            if not hasattr(nnxopt, "bfgs"):
                raise Unavailable("nnxopt.bfgs is not available")
            self.tx = nnxopt.bfgs(**self.bfgs)

    def setup(self):
        return self.task.make_model()

    def solve(self, model, flag):
        res = self.minimize(
            self.task.loss_fn,
            model,
            *self.task.batch,
            jnp.float32(flag),
            tx=self.tx,
            gtol=self.cfg.gtol,
            ftol=self.cfg.ftol,
            maxiter=self.cfg.maxiter,
        )
        return Outcome(
            self.task.to_flat(model), int(res.nit), int(res.nfev), str(res.message)
        )


def _minimize_with(search: str) -> type[NnxoptMinimize]:
    return type(
        f"NnxoptMinimize_{search}",
        (NnxoptMinimize,),
        {
            "name": f"nnxopt.minimize ({search})",
            "short": "nnxopt-" + "".join(w[0] for w in search.split("_"))[:2],
            "linesearch": search,
        },
    )


def _minimize_bfgs(label: str, short: str, **options: Any) -> type[NnxoptMinimize]:
    return type(
        f"NnxoptMinimize_{short}",
        (NnxoptMinimize,),
        {"name": f"nnxopt.minimize ({label})", "short": short, "bfgs": options},
    )


#: nnxopt's dense BFGS family (``nnxopt.bfgs``), against optimistix ``BFGS``.
BFGS_FAMILY = (
    _minimize_bfgs("bfgs", "nnxopt-B"),
    _minimize_bfgs("ss-BFGS", "nnxopt-ssB", self_scaling=True),
    _minimize_bfgs("ss-Broyden", "nnxopt-ssBr", self_scaling=True, broyden_phi=None),
)


class NnxoptMinimizeStep(Solver):
    """``nnxopt.Optimizer(model, nnxopt.lbfgs()).minimize_step`` under ``nnx.jit``."""

    name = "nnxopt Optimizer.minimize_step"
    short = "nnxopt-step"

    def __init__(self, task, cfg):
        super().__init__(task, cfg)
        nnxopt = _nnxopt()
        if not hasattr(nnxopt, "lbfgs"):
            raise Unavailable("nnxopt.lbfgs is not available yet")
        self.nnxopt = nnxopt
        self.tx = nnxopt.lbfgs(memory_size=cfg.memory_size)
        loss_fn, batch = task.loss_fn, task.batch

        @nnx.jit
        def step(model, optimizer, flag):
            loss = optimizer.minimize_step(model, loss_fn, *batch, flag)
            grad = optax.tree.get(nnx.as_pure(optimizer.opt_state), "grad")
            return loss, _inf_norm(grad)

        self._step = step

    def setup(self):
        model = self.task.make_model()
        return model, self.nnxopt.Optimizer(model, self.tx, wrt=nnx.Param)

    def solve(self, state, flag):
        model, optimizer = state
        flag = jnp.float32(flag)
        nit = 0
        for nit in range(1, self.cfg.maxiter + 1):  # noqa: B007
            _, gnorm = self._step(model, optimizer, flag)
            if float(gnorm) <= self.cfg.gtol:
                break
        return Outcome(self.task.to_flat(model), nit)


LINESEARCHES = ("zoom", "hager_zhang", "more_thuente", "backtracking")

#: Every adapter, in table order.
SOLVERS: tuple[type[Solver], ...] = (
    ScipyLBFGSB,
    TorchLBFGS,
    OptaxLoop,
    OptaxWhile,
    NNXOptimizer,
    JaxoptLBFGS,
    OptimistixLBFGS,
    OptimistixBFGS,
    NnxoptMinimize,
    *(_minimize_with(s) for s in LINESEARCHES),
    NnxoptMinimizeStep,
)
#: Adapters run only when named with ``--solvers`` (not in the default run).
OPTIONAL: tuple[type[Solver], ...] = BFGS_FAMILY

#: How each peer's stopping rule maps onto (gtol, maxiter).
NOTES = {
    "scipy L-BFGS-B": "gtol on the projected-gradient inf-norm, ftol, maxiter",
    "torch LBFGS": "tolerance_grad=gtol (inf-norm), tolerance_change=ftol (absolute)",
    "optax lbfgs (py loop)": "inf-norm of the line search's gradient <= gtol",
    "optax lbfgs (while_loop)": "same test inside lax.while_loop",
    "nnx.Optimizer + optax.lbfgs": "inf-norm of the step's gradient <= gtol",
    "jaxopt LBFGS": "tol=gtol on the gradient 2-norm",
    "optimistix LBFGS": "no gradient test: Cauchy rtol=atol=1e-10 on y and f",
    "optimistix BFGS": "no gradient test: Cauchy rtol=atol=1e-10 on y and f",
}
