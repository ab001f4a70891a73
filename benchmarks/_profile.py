"""Dolan–Moré performance profiles.

For a cost ``t[p, s]`` of solver ``s`` on problem ``p`` (``inf`` when it did
not reach the target), the ratio ``r[p, s] = t[p, s] / min_s t[p, s]`` and the
profile ``rho_s(tau) = #{p : r[p, s] <= tau} / #{p attempted by s}``.
``rho_s(1)`` is the fraction of problems where ``s`` is the best;
``rho_s(inf)`` the fraction it solves at all.

References:
    E. D. Dolan, J. J. Moré, "Benchmarking optimization software with
    performance profiles", Math. Program. 91:201-213, 2002.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def ratios(cost: np.ndarray) -> np.ndarray:
    """Return performance ratios from a ``(problems, solvers)`` cost array.

    ``nan`` marks "not attempted" and stays ``nan``; ``inf`` marks "failed".
    Problems nobody solved are dropped.
    """
    cost = np.asarray(cost, dtype=np.float64)
    finite = np.where(np.isfinite(cost), cost, np.inf)
    best = finite.min(axis=1)
    keep = np.isfinite(best)
    r = cost[keep] / np.maximum(best[keep, None], 1e-300)
    return np.where(np.isnan(cost[keep]), np.nan, r)


def profile(r: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Return ``rho[s, k]``: fraction of attempted problems with ratio <= taus[k]."""
    attempted = (~np.isnan(r)).sum(axis=0)
    rr = np.where(np.isnan(r), np.inf, r)
    hits = (rr[:, :, None] <= taus[None, None, :]).sum(axis=0)
    return hits / np.maximum(attempted, 1)[:, None]


def plot(
    costs: dict[str, np.ndarray], solvers: list[str], path: Path, title: str
) -> None:
    """Draw one profile panel per cost (e.g. evaluations, seconds) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(costs), figsize=(6.5 * len(costs), 4.8))
    axes = np.atleast_1d(axes)
    styles = ["-", "--", "-.", ":"]
    for ax, (label, cost) in zip(axes, costs.items()):
        r = ratios(cost)
        finite = r[np.isfinite(r)]
        top = max(2.0, float(finite.max()) * 1.5) if finite.size else 2.0
        taus = np.logspace(0.0, math.log10(top), 400)
        rho = profile(r, taus)
        for i, name in enumerate(solvers):
            ax.step(
                taus,
                rho[i],
                where="post",
                label=name,
                linestyle=styles[(i // 10) % len(styles)],
            )
        ax.set_xscale("log", base=2)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(r"$\tau$ (within a factor $\tau$ of the best)")
        ax.set_ylabel("fraction of problems")
        ax.set_title(f"{label} ({r.shape[0]} problems)")
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].legend(loc="lower right", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
