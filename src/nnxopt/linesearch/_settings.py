"""Argument checks of the line searches (construction time, never inside jit),
and :class:`Settings`, the checked arguments every search takes.

Kept apart from ``_common`` (the traced machinery) so that each side reads
on its own; every search builds its ``Settings`` with :func:`check_settings`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def check_bool(call: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"{call}: `{name}` must be a bool, got {value!r} of type "
            f"{type(value).__name__}. Pass True or False."
        )


def check_int(call: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{call}: `{name}` must be a Python int, got {value!r} of type "
            f"{type(value).__name__}. Pass an int such as {max(minimum, 20)}."
        )
    if value < minimum:
        raise ValueError(
            f"{call}: `{name}` must be >= {minimum}, got {value!r}. "
            f"Pass an int of at least {minimum}."
        )


def check_float(
    call: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    high_open: bool = True,
    hint: str = "",
) -> float:
    """Check that ``value`` is a real number in the given interval; return it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{call}: `{name}` must be a Python float, got {value!r} of type "
            f"{type(value).__name__}. {hint}".rstrip()
        )
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise ValueError(
            f"{call}: `{name}` must be a finite float in {interval}, got "
            f"{value!r}. {hint}".rstrip()
        )
    return value


def check_rtols(
    call: str,
    slope_rtol: Any,
    curv_rtol: Any,
    *,
    slope_high: float = 1.0,
    typical: tuple[float, float] = (1e-4, 0.9),
) -> tuple[float, float]:
    """Check ``0 < slope_rtol <= curv_rtol < 1`` (the Wolfe constants).

    Equality is allowed: Moré and Thuente test with ``mu == eta``.
    ``slope_high`` is a tighter upper bound on ``slope_rtol`` (Hager–Zhang's
    ``delta < 0.5``).
    """
    c1 = check_float(
        call, "slope_rtol", slope_rtol, low=0.0, high=slope_high,
        hint=f"Typical: {typical[0]}.",
    )  # fmt: skip
    c2 = check_float(
        call, "curv_rtol", curv_rtol, low=0.0, high=1.0,
        hint=f"Typical: {typical[1]}.",
    )  # fmt: skip
    if not c1 <= c2:
        raise ValueError(
            f"{call}: `slope_rtol` must not exceed `curv_rtol` (otherwise "
            f"no step may satisfy both Wolfe conditions), got slope_rtol="
            f"{slope_rtol!r} and curv_rtol={curv_rtol!r}. Typical: slope_rtol="
            f"{typical[0]}, curv_rtol={typical[1]}."
        )
    return c1, c2


def check_max_learning_rate(call: str, value: Any) -> float:
    """Check ``max_learning_rate`` (None means no upper bound); return a float."""
    if value is None:
        return math.inf
    return check_float(
        call,
        "max_learning_rate",
        value,
        low=0.0,
        hint="Pass a positive float, or None for no bound.",
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """The checked arguments every search takes (``curv_rtol`` and ``xtol`` are
    None for ``backtracking``, which has neither)."""

    slope_rtol: float
    curv_rtol: float | None
    max_steps: int
    max_learning_rate: float
    xtol: float | None
    initial_step: float
    has_aux: bool


def check_settings(
    call: str,
    slope_rtol: Any,
    curv_rtol: Any,
    max_linesearch_steps: Any,
    max_learning_rate: Any,
    stepsize_precision: Any,
    initial_step: Any,
    has_aux: Any,
    *,
    slope_high: float = 1.0,
    typical: tuple[float, float] = (1e-4, 0.9),
) -> Settings:
    """Check the common arguments of a search (construction time).

    ``curv_rtol=None`` (``backtracking``) checks ``slope_rtol`` alone;
    ``stepsize_precision=None`` means the search has no interval tolerance.
    """
    if curv_rtol is None:
        c1 = check_float(
            call, "slope_rtol", slope_rtol, low=0.0, high=slope_high,
            hint=f"Typical: {typical[0]}.",
        )  # fmt: skip
        c2 = None
    else:
        c1, c2 = check_rtols(
            call, slope_rtol, curv_rtol, slope_high=slope_high, typical=typical
        )
    check_int(call, "max_linesearch_steps", max_linesearch_steps, 1)
    amax = check_max_learning_rate(call, max_learning_rate)
    xtol = None
    if stepsize_precision is not None:
        xtol = check_float(
            call, "stepsize_precision", stepsize_precision, low=0.0,
            low_open=False, hint="Typical: 1e-10.",
        )  # fmt: skip
    step0 = check_float(
        call, "initial_step", initial_step, low=0.0, hint="Typical: 1.0."
    )
    check_bool(call, "has_aux", has_aux)
    return Settings(c1, c2, max_linesearch_steps, amax, xtol, step0, has_aux)
