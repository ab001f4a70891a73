"""What scipy L-BFGS-B reached on the problem library, recorded on one machine.

The benchmarks' targets ("scipy's float64 loss") and their "scipy solves it"
list come from here. It is data of the machine that recorded it (scipy, numpy's
BLAS and XLA round differently on other CPUs, so iteration counts can move by a
few): the tests never compare against it; they run scipy at test time.
Regenerate with ``python -m benchmarks.record_scipy``.
"""

from __future__ import annotations

from typing import NamedTuple


class ScipyReference(NamedTuple):
    """What scipy L-BFGS-B reached from ``x0`` in float64 with SCIPY_OPTIONS."""

    fun: float
    grad_norm: float  # infinity norm of the final gradient
    nit: int
    nfev: int
    success: bool


# BEGIN GENERATED
# by `python -m benchmarks.record_scipy`; do not edit by hand.
# fmt: off
SCIPY_REFERENCE: dict[str, ScipyReference] = {
    "rosenbrock": ScipyReference(3.0405320695759134e-22, 4.112807872723856e-10, 38, 46, True),
    "freudenstein_roth": ScipyReference(48.98425367924001, 2.1721205863665707e-07, 20, 21, True),
    "powell_badly_scaled": ScipyReference(1.274478880427172e-07, 3.343972690046788e-07, 83, 98, True),
    "brown_badly_scaled": ScipyReference(4.593911585826859e-22, 4.2866824402241195e-05, 14, 26, True),
    "beale": ScipyReference(7.134304730201715e-20, 2.5318052654394447e-09, 16, 17, True),
    "jennrich_sampson": ScipyReference(214.3418255179205, 3715.342051808542, 5, 24, True),
    "helical_valley": ScipyReference(1.4200305619092219e-19, 2.6957547310590163e-09, 30, 34, True),
    "bard": ScipyReference(0.00821487730657901, 3.016985267167982e-08, 25, 26, True),
    "gaussian": ScipyReference(1.1279335363844274e-08, 1.0818281738802085e-07, 8, 10, True),
    "meyer": ScipyReference(112123.43771740067, 142.6061988107674, 29, 33, True),
    "box_3d": ScipyReference(4.108334218378872e-16, 3.6667607114609505e-08, 31, 39, True),
    "powell_singular": ScipyReference(2.953018493112707e-13, 4.290216565471002e-07, 47, 52, True),
    "wood": ScipyReference(8.5500614980995e-19, 1.034743853132558e-08, 87, 113, True),
    "kowalik_osborne": ScipyReference(0.0003075056038492765, 1.7138277755210473e-08, 26, 37, True),
    "brown_dennis": ScipyReference(85822.2016263563, 0.0001856758026406169, 20, 21, True),
    "osborne1": ScipyReference(5.464894726706947e-05, 0.00014502821609103933, 110, 127, True),
    "biggs_exp6": ScipyReference(0.005655649925507251, 9.104406016358396e-08, 39, 44, True),
    "watson6": ScipyReference(0.0022876700538562353, 3.5213700144455518e-06, 53, 58, True),
    "watson9": ScipyReference(6.681139581478411e-06, 4.412558577649925e-06, 113, 132, True),
    "extended_rosenbrock100": ScipyReference(2.795254182851873e-20, 1.5136070197338625e-10, 37, 49, True),
    "extended_powell100": ScipyReference(2.297907051446612e-13, 6.500518064737989e-08, 53, 56, True),
    "penalty1_10": ScipyReference(7.087651467092055e-05, 1.7947707725693923e-09, 61, 71, True),
    "penalty2_10": ScipyReference(0.00029366124761701204, 2.202064795311419e-06, 152, 199, True),
    "variably_dimensioned10": ScipyReference(7.662065333303429e-24, 5.543276948571929e-11, 19, 20, True),
    "trigonometric10": ScipyReference(2.7950561218933507e-05, 9.351475359041894e-09, 28, 34, True),
    "brown_almost_linear10": ScipyReference(3.479986975479873e-18, 6.068734861003629e-09, 18, 20, True),
    "discrete_boundary_value10": ScipyReference(7.167027975832128e-12, 1.227972619236762e-06, 38, 44, True),
    "discrete_integral10": ScipyReference(1.1282737208430399e-18, 1.1570767508508716e-09, 7, 9, True),
    "broyden_tridiagonal10": ScipyReference(1.6674999233735771e-13, 4.6298075888405024e-06, 19, 21, True),
    "broyden_banded10": ScipyReference(4.279546737200246e-15, 8.143096098750252e-07, 14, 15, True),
    "linear_full_rank10": ScipyReference(10.000000000000005, 1.1102230246251565e-14, 2, 3, True),
    "chebyquad8": ScipyReference(0.003516873725679608, 5.234622004275157e-08, 22, 28, True),
    "least_squares200x50": ScipyReference(142.52025674005094, 0.01328692774036846, 582, 614, True),
    "logistic500x20": ScipyReference(0.22128576852312132, 1.0666864640705709e-08, 14, 15, True),
    "mlp_sin_w32d1": ScipyReference(1.4180381936247278e-06, 3.7292012390133655e-06, 878, 1070, True),
    "pinn1d_w16d2": ScipyReference(8.587384485977458e-08, 8.3595700508522e-06, 336, 387, True),
    "pinn2d_w16d2": ScipyReference(3.8699955528028395e-05, 0.0010344217453491854, 2000, 2149, False),
    "batchnorm_w32": ScipyReference(9.328168985271076e-06, 8.883471656421853e-05, 2000, 2201, False),
}
# fmt: on
# END GENERATED
