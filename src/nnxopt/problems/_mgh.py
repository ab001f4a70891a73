"""The Moré–Garbow–Hillstrom (1981) unconstrained set, as sums of squares.

Numbering as in the paper; each function returns a :class:`Problem` whose
``f_star`` is the published minimum of the basin its standard start leads to.

References:
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing Unconstrained
    Optimization Software", ACM TOMS 7(1):17-41, 1981.
"""

from __future__ import annotations

import math

import numpy as np

from ._records import Problem, _cat, _const, _index, _mgh, _stack, xp_of


def rosenbrock() -> Problem:
    """MGH 1: Rosenbrock, n = m = 2."""

    def r(x):
        return _stack(x, [10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])

    return _mgh("rosenbrock", r, [-1.2, 1.0], 0.0, x_star=[1.0, 1.0])


def freudenstein_roth() -> Problem:
    """MGH 2: Freudenstein and Roth, n = m = 2 (start lies in a local basin)."""

    def r(x):
        a, b = x[0], x[1]
        return _stack(
            x,
            [
                -13.0 + a + ((5.0 - b) * b - 2.0) * b,
                -29.0 + a + ((b + 1.0) * b - 14.0) * b,
            ],
        )

    return _mgh(
        "freudenstein_roth",
        r,
        [0.5, -2.0],
        48.9842,
        f_global=0.0,
        notes="global f=0 at (5, 4); from x0 gradient methods reach the local "
        "minimum 48.9842 at (11.41..., -0.8968...)",
    )


def powell_badly_scaled() -> Problem:
    """MGH 3: Powell badly scaled, n = m = 2."""

    def r(x):
        xp = xp_of(x)
        return _stack(
            x,
            [
                1e4 * x[0] * x[1] - 1.0,
                xp.exp(-x[0]) + xp.exp(-x[1]) - 1.0001,
            ],
        )

    return _mgh(
        "powell_badly_scaled",
        r,
        [0.0, 1.0],
        0.0,
        notes="minimiser (1.098e-5, 9.106); very badly scaled",
    )


def brown_badly_scaled() -> Problem:
    """MGH 4: Brown badly scaled, n = 2, m = 3."""

    def r(x):
        return _stack(x, [x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])

    return _mgh("brown_badly_scaled", r, [1.0, 1.0], 0.0, x_star=[1e6, 2e-6])


def beale() -> Problem:
    """MGH 5: Beale, n = 2, m = 3."""

    def r(x):
        i = _index(x, 1, 4)
        y = _const(x, [1.5, 2.25, 2.625])
        return y - x[0] * (1.0 - x[1] ** i)

    return _mgh("beale", r, [1.0, 1.0], 0.0, x_star=[3.0, 0.5])


def jennrich_sampson(m: int = 10) -> Problem:
    """MGH 6: Jennrich and Sampson, n = 2, m = 10."""

    def r(x):
        xp = xp_of(x)
        i = _index(x, 1, m + 1)
        return 2.0 + 2.0 * i - (xp.exp(i * x[0]) + xp.exp(i * x[1]))

    return _mgh(
        "jennrich_sampson",
        r,
        [0.3, 0.4],
        124.362 if m == 10 else None,
        notes="minimum at x1 = x2 = 0.2578 for m = 10",
    )


def helical_valley() -> Problem:
    """MGH 7: helical valley, n = m = 3."""

    def r(x):
        xp = xp_of(x)
        theta = xp.arctan(x[1] / x[0]) / (2.0 * math.pi)
        theta = theta + xp.where(x[0] < 0, 0.5, 0.0)
        return _stack(
            x,
            [
                10.0 * (x[2] - 10.0 * theta),
                10.0 * (xp.sqrt(x[0] ** 2 + x[1] ** 2) - 1.0),
                x[2],
            ],
        )

    return _mgh("helical_valley", r, [-1.0, 0.0, 0.0], 0.0, x_star=[1.0, 0.0, 0.0])


_BARD_Y = [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96,
           1.34, 2.10, 4.39]  # fmt: skip


def bard() -> Problem:
    """MGH 8: Bard, n = 3, m = 15."""

    u = np.arange(1.0, 16.0)
    v = 16.0 - u
    w = np.minimum(u, v)

    def r(x):
        return _const(x, _BARD_Y) - (
            x[0] + _const(x, u) / (_const(x, v) * x[1] + _const(x, w) * x[2])
        )

    return _mgh(
        "bard",
        r,
        [1.0, 1.0, 1.0],
        8.21487e-3,
        f_global=8.21487e-3,
        notes="another stationary value 17.4286 at (0.8406, -inf, -inf)",
    )


_GAUSSIAN_Y = [0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989,
               0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009]  # fmt: skip


def gaussian() -> Problem:
    """MGH 9: Gaussian, n = 3, m = 15."""
    t = (8.0 - np.arange(1.0, 16.0)) / 2.0

    def r(x):
        xp = xp_of(x)
        tt = _const(x, t)
        return x[0] * xp.exp(-x[1] * (tt - x[2]) ** 2 / 2.0) - _const(x, _GAUSSIAN_Y)

    return _mgh("gaussian", r, [0.4, 1.0, 0.0], 1.12793e-8)


_MEYER_Y = [34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0,
            8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0, 2872.0]  # fmt: skip


def meyer() -> Problem:
    """MGH 10: Meyer, n = 3, m = 16 (notoriously hard for quasi-Newton)."""
    t = 45.0 + 5.0 * np.arange(1.0, 17.0)

    def r(x):
        xp = xp_of(x)
        return x[0] * xp.exp(x[1] / (_const(x, t) + x[2])) - _const(x, _MEYER_Y)

    return _mgh(
        "meyer",
        r,
        [0.02, 4000.0, 250.0],
        87.9458,
        notes="minimiser (0.0056, 6181.3, 345.2); parameters differ by 1e6 in "
        "scale, L-BFGS usually stalls far from it",
    )


def box_3d(m: int = 10) -> Problem:
    """MGH 12: Box three-dimensional, n = 3, m = 10."""
    t = 0.1 * np.arange(1.0, m + 1.0)
    c = np.exp(-t) - np.exp(-10.0 * t)

    def r(x):
        xp = xp_of(x)
        tt = _const(x, t)
        return xp.exp(-tt * x[0]) - xp.exp(-tt * x[1]) - x[2] * _const(x, c)

    return _mgh(
        "box_3d",
        r,
        [0.0, 10.0, 20.0],
        0.0,
        x_star=[1.0, 10.0, 1.0],
        notes="also f=0 at (10, 1, -1) and on the line x1 = x2, x3 = 0",
    )


def powell_singular() -> Problem:
    """MGH 13: Powell singular, n = m = 4 (singular Hessian at the minimum)."""

    def r(x):
        return _stack(
            x,
            [
                x[0] + 10.0 * x[1],
                math.sqrt(5.0) * (x[2] - x[3]),
                (x[1] - 2.0 * x[2]) ** 2,
                math.sqrt(10.0) * (x[0] - x[3]) ** 2,
            ],
        )

    return _mgh("powell_singular", r, [3.0, -1.0, 0.0, 1.0], 0.0, x_star=[0.0] * 4)


def wood() -> Problem:
    """MGH 14: Wood, n = 4, m = 6."""

    def r(x):
        return _stack(
            x,
            [
                10.0 * (x[1] - x[0] ** 2),
                1.0 - x[0],
                math.sqrt(90.0) * (x[3] - x[2] ** 2),
                1.0 - x[2],
                math.sqrt(10.0) * (x[1] + x[3] - 2.0),
                (x[1] - x[3]) / math.sqrt(10.0),
            ],
        )

    return _mgh("wood", r, [-3.0, -1.0, -3.0, -1.0], 0.0, x_star=[1.0] * 4)


_KOWALIK_Y = [0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342,
              0.0323, 0.0235, 0.0246]  # fmt: skip
_KOWALIK_U = [4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625]


def kowalik_osborne() -> Problem:
    """MGH 15: Kowalik and Osborne, n = 4, m = 11."""

    def r(x):
        u = _const(x, _KOWALIK_U)
        return _const(x, _KOWALIK_Y) - x[0] * (u * u + u * x[1]) / (
            u * u + u * x[2] + x[3]
        )

    return _mgh(
        "kowalik_osborne",
        r,
        [0.25, 0.39, 0.415, 0.39],
        3.07505e-4,
        notes="another stationary value 1.02734e-3 at (+inf, -14.08, -inf, -inf)",
    )


def brown_dennis(m: int = 20) -> Problem:
    """MGH 16: Brown and Dennis, n = 4, m = 20."""
    t = np.arange(1.0, m + 1.0) / 5.0

    def r(x):
        xp = xp_of(x)
        tt = _const(x, t)
        a = x[0] + tt * x[1] - xp.exp(tt)
        b = x[2] + x[3] * xp.sin(tt) - xp.cos(tt)
        return a * a + b * b

    return _mgh(
        "brown_dennis", r, [25.0, 5.0, -5.0, -1.0], 85822.2 if m == 20 else None
    )


_OSBORNE1_Y = [0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784,
               0.751, 0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522,
               0.506, 0.490, 0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420,
               0.414, 0.411, 0.406]  # fmt: skip


def osborne1() -> Problem:
    """MGH 17: Osborne 1, n = 5, m = 33."""
    t = 10.0 * np.arange(33.0)

    def r(x):
        xp = xp_of(x)
        tt = _const(x, t)
        model = x[0] + x[1] * xp.exp(-tt * x[3]) + x[2] * xp.exp(-tt * x[4])
        return _const(x, _OSBORNE1_Y) - model

    return _mgh("osborne1", r, [0.5, 1.5, -1.0, 0.01, 0.02], 5.46489e-5)


def biggs_exp6(m: int = 13) -> Problem:
    """MGH 18: Biggs EXP6, n = 6, m = 13."""
    t = 0.1 * np.arange(1.0, m + 1.0)
    y = np.exp(-t) - 5.0 * np.exp(-10.0 * t) + 3.0 * np.exp(-4.0 * t)

    def r(x):
        xp = xp_of(x)
        tt = _const(x, t)
        return (
            x[2] * xp.exp(-tt * x[0])
            - x[3] * xp.exp(-tt * x[1])
            + x[5] * xp.exp(-tt * x[4])
            - _const(x, y)
        )

    return _mgh(
        "biggs_exp6",
        r,
        [1.0, 2.0, 1.0, 1.0, 1.0, 1.0],
        5.65565e-3 if m == 13 else None,
        f_global=0.0,
        notes="global f=0 at (1, 10, 1, 5, 4, 3); the start usually leads to "
        "the local value 5.65565e-3",
    )


def watson(n: int = 9) -> Problem:
    """MGH 20: Watson, 2 <= n <= 31, m = 31."""
    t = np.arange(1.0, 30.0) / 29.0
    published = {6: 2.28767e-3, 9: 1.39976e-6, 12: 4.72238e-10}
    j = np.arange(n, dtype=np.float64)
    # powers[i, j] = t_i ** j; dpowers[i, j] = j * t_i ** (j - 1)
    powers = t[:, None] ** j[None, :]
    dpowers = np.concatenate(
        [np.zeros((29, 1)), j[None, 1:] * t[:, None] ** (j[None, 1:] - 1.0)], axis=1
    )

    def r(x):
        s1 = _const(x, dpowers) @ x
        s2 = _const(x, powers) @ x
        main = s1 - s2 * s2 - 1.0
        return _cat(x, [main, _stack(x, [x[0], x[1] - x[0] ** 2 - 1.0])])

    return _mgh(f"watson{n}", r, [0.0] * n, published.get(n))


def extended_rosenbrock(n: int = 100) -> Problem:
    """MGH 21: extended Rosenbrock, n even, m = n."""
    if n % 2:
        raise ValueError(f"extended_rosenbrock: n must be even, got n={n!r}")

    def r(x):
        odd, even = x[0::2], x[1::2]
        return _cat(x, [10.0 * (even - odd**2), 1.0 - odd])

    return _mgh(
        f"extended_rosenbrock{n}", r, [-1.2, 1.0] * (n // 2), 0.0, x_star=[1.0] * n
    )


def extended_powell(n: int = 100) -> Problem:
    """MGH 22: extended Powell singular, n a multiple of 4, m = n."""
    if n % 4:
        raise ValueError(f"extended_powell: n must be a multiple of 4, got n={n!r}")

    def r(x):
        a, b, c, d = x[0::4], x[1::4], x[2::4], x[3::4]
        return _cat(
            x,
            [
                a + 10.0 * b,
                math.sqrt(5.0) * (c - d),
                (b - 2.0 * c) ** 2,
                math.sqrt(10.0) * (a - d) ** 2,
            ],
        )

    return _mgh(
        f"extended_powell{n}", r, [3.0, -1.0, 0.0, 1.0] * (n // 4), 0.0,
        x_star=[0.0] * n,
    )  # fmt: skip


def penalty1(n: int = 10) -> Problem:
    """MGH 23: penalty function I, m = n + 1."""
    published = {4: 2.24997e-5, 10: 7.08765e-5}

    def r(x):
        head = math.sqrt(1e-5) * (x - 1.0)
        return _cat(x, [head, ((x * x).sum() - 0.25)[None]])

    return _mgh(f"penalty1_{n}", r, list(range(1, n + 1)), published.get(n))


def penalty2(n: int = 10) -> Problem:
    """MGH 24: penalty function II, m = 2n."""
    published = {4: 9.37629e-6, 10: 2.93660e-4}
    i = np.arange(2.0, n + 1.0)
    y = np.exp(i / 10.0) + np.exp((i - 1.0) / 10.0)
    weights = np.arange(n, 0, -1, dtype=np.float64)
    sa = math.sqrt(1e-5)

    def r(x):
        xp = xp_of(x)
        e = xp.exp(x / 10.0)
        return _cat(
            x,
            [
                (x[0] - 0.2)[None],
                sa * (e[1:] + e[:-1] - _const(x, y)),
                sa * (e[1:] - math.exp(-0.1)),
                ((_const(x, weights) * x * x).sum() - 1.0)[None],
            ],
        )

    return _mgh(f"penalty2_{n}", r, [0.5] * n, published.get(n))


def variably_dimensioned(n: int = 10) -> Problem:
    """MGH 25: variably dimensioned, m = n + 2."""
    j = np.arange(1.0, n + 1.0)

    def r(x):
        s = (_const(x, j) * (x - 1.0)).sum()
        return _cat(x, [x - 1.0, s[None], (s * s)[None]])

    return _mgh(f"variably_dimensioned{n}", r, list(1.0 - j / n), 0.0, x_star=[1.0] * n)


def trigonometric(n: int = 10) -> Problem:
    """MGH 26: trigonometric, m = n."""
    i = np.arange(1.0, n + 1.0)

    def r(x):
        xp = xp_of(x)
        c = xp.cos(x)
        return float(n) - c.sum() + _const(x, i) * (1.0 - c) - xp.sin(x)

    return _mgh(
        f"trigonometric{n}",
        r,
        [1.0 / n] * n,
        2.79506e-5 if n == 10 else None,
        f_global=0.0,
        notes="f=0 is the global minimum; for n = 10 the standard start leads "
        "to the local value 2.79506e-5",
    )


def brown_almost_linear(n: int = 10) -> Problem:
    """MGH 27: Brown almost-linear, m = n."""

    def r(x):
        xp = xp_of(x)
        head = x[:-1] + x.sum() - float(n + 1)
        return _cat(x, [head, (xp.prod(x) - 1.0)[None]])

    return _mgh(
        f"brown_almost_linear{n}",
        r,
        [0.5] * n,
        0.0,
        x_star=[1.0] * n,
        notes="also f=1 at (0, ..., 0, n+1)",
    )


def _grid(n: int) -> tuple[float, np.ndarray]:
    h = 1.0 / (n + 1)
    return h, h * np.arange(1.0, n + 1.0)


def discrete_boundary_value(n: int = 10) -> Problem:
    """MGH 28: discrete boundary value, m = n."""
    h, t = _grid(n)

    def r(x):
        zero = x[:1] * 0.0
        left = _cat(x, [zero, x[:-1]])
        right = _cat(x, [x[1:], zero])
        return 2.0 * x - left - right + h * h * (x + _const(x, t) + 1.0) ** 3 / 2.0

    return _mgh(f"discrete_boundary_value{n}", r, list(t * (t - 1.0)), 0.0)


def discrete_integral(n: int = 10) -> Problem:
    """MGH 29: discrete integral equation, m = n."""
    h, t = _grid(n)
    # r = x + h/2 [ (1 - t_i) sum_{j<=i} t_j c_j + t_i sum_{j>i} (1 - t_j) c_j ]
    lower = np.tril(np.ones((n, n))) * (1.0 - t)[:, None] * t[None, :]
    upper = np.triu(np.ones((n, n)), k=1) * t[:, None] * (1.0 - t)[None, :]
    kernel = h / 2.0 * (lower + upper)

    def r(x):
        c = (x + _const(x, t) + 1.0) ** 3
        return x + _const(x, kernel) @ c

    return _mgh(f"discrete_integral{n}", r, list(t * (t - 1.0)), 0.0)


def broyden_tridiagonal(n: int = 10) -> Problem:
    """MGH 30: Broyden tridiagonal, m = n."""

    def r(x):
        zero = x[:1] * 0.0
        left = _cat(x, [zero, x[:-1]])
        right = _cat(x, [x[1:], zero])
        return (3.0 - 2.0 * x) * x - left - 2.0 * right + 1.0

    return _mgh(f"broyden_tridiagonal{n}", r, [-1.0] * n, 0.0)


def broyden_banded(n: int = 10, ml: int = 5, mu: int = 1) -> Problem:
    """MGH 31: Broyden banded, m = n, lower bandwidth 5, upper 1."""
    i = np.arange(n)
    band = (np.abs(i[:, None] - i[None, :]) > 0) & (i[None, :] >= i[:, None] - ml)
    band &= i[None, :] <= i[:, None] + mu
    band = band.astype(np.float64)

    def r(x):
        return x * (2.0 + 5.0 * x * x) + 1.0 - _const(x, band) @ (x * (1.0 + x))

    return _mgh(f"broyden_banded{n}", r, [-1.0] * n, 0.0)


def linear_full_rank(n: int = 10, m: int = 20) -> Problem:
    """MGH 32: linear function, full rank, m >= n."""

    def r(x):
        s = (2.0 / m) * x.sum()
        tail = _const(x, np.zeros(m - n)) - s - 1.0
        return _cat(x, [x - s - 1.0, tail])

    return _mgh(
        f"linear_full_rank{n}",
        r,
        [1.0] * n,
        float(m - n),
        x_star=[-1.0] * n,
    )


def chebyquad(n: int = 8, m: int | None = None) -> Problem:
    """MGH 35: Chebyquad, m >= n (shifted Chebyshev polynomials on [0, 1])."""
    m = n if m is None else m
    k = np.arange(1.0, m + 1.0)
    integral = np.zeros(m)
    even = k % 2 == 0
    integral[even] = -1.0 / (k[even] ** 2 - 1.0)
    published = {8: 3.51687e-3, 10: 6.50395e-3}

    def r(x):
        y = 2.0 * x - 1.0
        t_prev, t_cur = y * 0.0 + 1.0, y
        rows = [t_cur.sum() / n]
        for _ in range(1, m):
            t_prev, t_cur = t_cur, 2.0 * y * t_cur - t_prev
            rows.append(t_cur.sum() / n)
        return _stack(x, rows) - _const(x, integral)

    f_star = 0.0 if (m == n and (n <= 7 or n == 9)) else published.get(n)
    return _mgh(f"chebyquad{n}", r, list(np.arange(1.0, n + 1.0) / (n + 1)), f_star)
