"""Known-minimum test problems: the library nnxopt is tested and benchmarked on.

Public so that users can benchmark their own solvers, transforms and settings
on the same problems (``from nnxopt import problems``); nnxopt's own tests and
``benchmarks/`` import it from here.

Four families, all plain data plus functions:

- :class:`Problem`: a smooth objective of one flat parameter vector with a
  standard starting point and a known minimum. The Moré–Garbow–Hillstrom
  (1981) unconstrained set is written as residuals, ``f(x) = sum_i r_i(x)^2``
  (their convention, no factor 1/2), plus a linear least-squares problem with a
  closed-form solution and an L2-regularised logistic regression.
- :class:`NNXProblem`: a factory-built ``flax.nnx`` model with its data and a
  ``loss_fn(model, *batch)`` (MLP regression, 1-D and 2-D Poisson PINNs, a
  BatchNorm model in training mode; not in ``nnx_problems()``, a 1-D viscous
  Burgers PINN, ``pinn_burgers_1d``, with its Cole–Hopf reference solution
  ``burgers_solution``). Sizes are arguments.
- :class:`BoundedProblem`: a problem with box bounds (``bounded_problems()``:
  Hock–Schittkowski problems with bounds, bounded Rosenbrock and quadratics,
  non-negative and bounded least squares, a GP marginal likelihood), and
  :func:`stack_bounded`, one objective for a whole set (one compiled solve).
- :data:`SCIPY_OPTIONS`: the options with which the tests and the benchmarks
  run ``scipy.optimize.minimize(method="L-BFGS-B")`` as the float64 reference
  (the reference itself is computed where it is used: a stored third-party
  trajectory depends on the CPU it was recorded on).

Every objective is dtype-agnostic (constants take the dtype of ``x``) and
backend-agnostic: it runs on ``jax.numpy`` arrays and, for the benchmarks'
PyTorch peer, on ``torch`` tensors (the array namespace is picked from the type
of ``x``), so both sides compute the same mathematics.

``f_star`` is the published minimum *of the basin the standard start leads to*
(what scipy converges to); where the global minimum is lower it is recorded in
``f_global`` (e.g. Freudenstein-Roth: ``f_star = 48.9842...``, ``f_global = 0``).

Example:
    >>> import jax.numpy as jnp
    >>> from nnxopt.problems import problem
    >>> p = problem("rosenbrock")
    >>> float(p.fn(jnp.asarray(p.x_star)))
    0.0

References:
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing Unconstrained
    Optimization Software", ACM TOMS 7(1):17-41, 1981.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ._bounded import GP_BOUNDS as GP_BOUNDS
from ._bounded import BoundedProblem as BoundedProblem
from ._bounded import BoundedStack as BoundedStack
from ._bounded import bounded_problems as bounded_problems
from ._bounded import gp_data as gp_data
from ._bounded import gp_negative_log_likelihood as gp_negative_log_likelihood
from ._bounded import least_squares_data as least_squares_data
from ._bounded import stack_bounded as stack_bounded
from ._burgers import BURGERS_NU as BURGERS_NU
from ._burgers import burgers_residual as burgers_residual
from ._burgers import burgers_solution as burgers_solution
from ._burgers import pinn_burgers_1d as pinn_burgers_1d
from ._fits import LOGISTIC_F_STAR as LOGISTIC_F_STAR
from ._fits import LOGISTIC_L2 as LOGISTIC_L2
from ._fits import linear_least_squares as linear_least_squares
from ._fits import logistic_regression as logistic_regression
from ._mgh import bard as bard
from ._mgh import beale as beale
from ._mgh import biggs_exp6 as biggs_exp6
from ._mgh import box_3d as box_3d
from ._mgh import brown_almost_linear as brown_almost_linear
from ._mgh import brown_badly_scaled as brown_badly_scaled
from ._mgh import brown_dennis as brown_dennis
from ._mgh import broyden_banded as broyden_banded
from ._mgh import broyden_tridiagonal as broyden_tridiagonal
from ._mgh import chebyquad as chebyquad
from ._mgh import discrete_boundary_value as discrete_boundary_value
from ._mgh import discrete_integral as discrete_integral
from ._mgh import extended_powell as extended_powell
from ._mgh import extended_rosenbrock as extended_rosenbrock
from ._mgh import freudenstein_roth as freudenstein_roth
from ._mgh import gaussian as gaussian
from ._mgh import helical_valley as helical_valley
from ._mgh import jennrich_sampson as jennrich_sampson
from ._mgh import kowalik_osborne as kowalik_osborne
from ._mgh import linear_full_rank as linear_full_rank
from ._mgh import meyer as meyer
from ._mgh import osborne1 as osborne1
from ._mgh import penalty1 as penalty1
from ._mgh import penalty2 as penalty2
from ._mgh import powell_badly_scaled as powell_badly_scaled
from ._mgh import powell_singular as powell_singular
from ._mgh import rosenbrock as rosenbrock
from ._mgh import trigonometric as trigonometric
from ._mgh import variably_dimensioned as variably_dimensioned
from ._mgh import watson as watson
from ._mgh import wood as wood
from ._nnx import NNXProblem as NNXProblem
from ._nnx import batchnorm_regression as batchnorm_regression
from ._nnx import mlp_regression as mlp_regression
from ._nnx import nnx_flat as nnx_flat
from ._nnx import pinn_poisson_1d as pinn_poisson_1d
from ._nnx import pinn_poisson_2d as pinn_poisson_2d
from ._nnx import poisson1d_residual as poisson1d_residual
from ._nnx import poisson2d_residual as poisson2d_residual
from ._records import Problem as Problem
from ._records import xp_of as xp_of

#: Options of ``scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
#: options=SCIPY_OPTIONS)``, the float64 reference of the tests and benchmarks.
#: ``gtol`` is on the infinity norm of the projected gradient; ``ftol`` on the
#: relative decrease.
SCIPY_OPTIONS: dict[str, Any] = {
    "maxcor": 10,
    "gtol": 1e-8,
    "ftol": 1e-12,
    "maxiter": 2000,
    "maxfun": 5000,
    "maxls": 20,
}


def mgh_problems() -> tuple[Problem, ...]:
    """Return the Moré–Garbow–Hillstrom set at its default sizes."""
    return (
        rosenbrock(),
        freudenstein_roth(),
        powell_badly_scaled(),
        brown_badly_scaled(),
        beale(),
        jennrich_sampson(),
        helical_valley(),
        bard(),
        gaussian(),
        meyer(),
        box_3d(),
        powell_singular(),
        wood(),
        kowalik_osborne(),
        brown_dennis(),
        osborne1(),
        biggs_exp6(),
        watson(6),
        watson(9),
        extended_rosenbrock(100),
        extended_powell(100),
        penalty1(10),
        penalty2(10),
        variably_dimensioned(10),
        trigonometric(10),
        brown_almost_linear(10),
        discrete_boundary_value(10),
        discrete_integral(10),
        broyden_tridiagonal(10),
        broyden_banded(10),
        linear_full_rank(10, 20),
        chebyquad(8),
    )


def flat_problems() -> tuple[Problem, ...]:
    """Return every flat-vector problem: MGH, least squares, logistic regression."""
    return (*mgh_problems(), linear_least_squares(), logistic_regression())


def nnx_problems(dtype: Any = jnp.float32) -> tuple[NNXProblem, ...]:
    """Return the NNX problem factories at their default (small) sizes."""
    return (
        mlp_regression(dtype=dtype),
        pinn_poisson_1d(dtype=dtype),
        pinn_poisson_2d(dtype=dtype),
        batchnorm_regression(dtype=dtype),
    )


def problem(name: str) -> Problem:
    """Return the flat problem called ``name``.

    Raises:
        KeyError: no such problem; the message lists the known names.
    """
    table = {p.name: p for p in flat_problems()}
    if name not in table:
        raise KeyError(f"problem({name!r}): unknown; known: {sorted(table)}")
    return table[name]
