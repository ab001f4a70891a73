"""Run every solver on every problem; print markdown, write JSON and a profile.

Per (problem, solver): a first call (compile included, timed), one counted run
(evaluations recorded by a host callback, untimed), then ``--repeats`` warm
runs (median time). Metrics: final ``f - f*``, gradient inf-norm (recomputed by
us at the returned point), iterations, value and gradient evaluations, warm and
first-call seconds, and the fair "to target" view: evaluations (and seconds,
pro-rated from the warm time by evaluations) until the loss first reaches the
float64 scipy L-BFGS-B reference within ``--tau``:
``f <= f_ref + tau * (f0 - f_ref)``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="L-BFGS side by side: nnxopt, optax, nnx.Optimizer, scipy, "
        "torch, jaxopt, optimistix on the known-minimum problems.",
    )
    p.add_argument("--quick", action="store_true", help="small subset (< 1 min)")
    p.add_argument("--full", action="store_true", help="every problem (~40 min)")
    p.add_argument(
        "--suite",
        default="default",
        choices=["default", "quick", "full", "nnx", "sizes"],
        help="problem set: default (< 10 min), quick, full, nnx (the NNX "
        "workloads), sizes (MLPs of 10^3 to 10^5 parameters)",
    )
    p.add_argument(
        "--dtype",
        default="float64",
        choices=["float64", "float32"],
        help="parameter dtype of the JAX solvers (scipy and torch run float64 "
        "arithmetic on float32 values of the JAX loss)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--problems", nargs="*", help="problem names (default: all)")
    p.add_argument(
        "--solvers",
        nargs="*",
        help="solver short names (default: all but the dense BFGS family, "
        "nnxopt-B nnxopt-ssB nnxopt-ssBr, run only when named)",
    )
    p.add_argument("--repeats", type=int, default=None, help="warm runs (median)")
    p.add_argument("--gtol", type=float, default=1e-8)
    p.add_argument("--ftol", type=float, default=1e-12)
    p.add_argument("--maxiter", type=int, default=1000)
    p.add_argument("--tau", type=float, default=1e-7, help="target accuracy")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in (
        "jax",
        "flax",
        "optax",
        "scipy",
        "torch",
        "jaxopt",
        "optimistix",
        "nnxopt",
        "numpy",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"


def _target(task: Any) -> float | None:
    if task.f_ref is None:
        return None
    return task.f_ref


def _run_one(task: Any, cls: type, cfg: Any, repeats: int, tau: float) -> dict:
    import jax

    from benchmarks._tasks import COUNTER

    row: dict[str, Any] = {"problem": task.name, "solver": cls.name, "short": cls.short}
    solver = cls(task, cfg)
    t0 = time.perf_counter()
    out = solver.solve(solver.setup(), 0.0)
    row["first_s"] = time.perf_counter() - t0

    COUNTER.reset()
    counted = solver.solve(solver.setup(), 1.0)
    jax.effects_barrier()
    values = COUNTER.values()
    row["nfev"], row["njev"] = COUNTER.nfev, COUNTER.njev

    times = []
    budget = max(1, repeats)
    for _ in range(budget):
        state = solver.setup()
        t0 = time.perf_counter()
        out = solver.solve(state, 0.0)
        times.append(time.perf_counter() - t0)
        if times[-1] > 1.0:  # slow solves: one warm run is enough
            break
    row["warm_s"] = statistics.median(times)
    row["us_per_eval"] = 1e6 * row["warm_s"] / max(1, row["nfev"])
    row["nit"], row["own_nfev"], row["message"] = out.nit, out.own_nfev, out.message
    row["counted_nit"] = counted.nit
    f, gnorm = task.evaluate(out.x)
    row["fun"], row["grad_norm"] = f, gnorm
    f_opt = task.f_star if task.f_star is not None else task.f_ref
    row["f_err"] = None if f_opt is None else f - f_opt
    f0 = task.evaluate(task.x0_flat)[0]
    target = None if task.f_ref is None else task.f_ref + tau * max(f0 - task.f_ref, 0)
    row["target"] = target
    hit = None
    if target is not None and values.size:
        idx = np.nonzero(values <= target)[0]
        hit = int(idx[0]) + 1 if idx.size else None
    if hit is None and target is not None and f <= target:
        hit = row["nfev"]  # reached at the end (e.g. torch's last point)
    row["evals_to_target"] = hit
    row["s_to_target"] = (
        None if hit is None else row["warm_s"] * hit / max(1, row["nfev"])
    )
    row["reached"] = hit is not None
    return row


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark described by parsed ``args``; return the JSON document."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from benchmarks import solvers as S
    from benchmarks._tasks import build_tasks

    cfg = S.Config(gtol=args.gtol, ftol=args.ftol, maxiter=args.maxiter)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    tasks = build_tasks(
        args.problems,
        quick=args.quick,
        full=args.full,
        dtype=jax.numpy.dtype(args.dtype),
        suite=args.suite,
    )
    pool = S.SOLVERS + S.OPTIONAL if args.solvers else S.SOLVERS
    classes = [c for c in pool if not args.solvers or c.short in args.solvers]
    print(
        f"# nnxopt benchmarks: {len(tasks)} problems x {len(classes)} solvers, "
        f"{args.dtype}, gtol={cfg.gtol:g} maxiter={cfg.maxiter} repeats={repeats} "
        f"tau={args.tau:g}",
        flush=True,
    )
    rows, skipped = [], {}
    for task in tasks:
        t_task = time.perf_counter()
        for cls in classes:
            try:
                row = _run_one(task, cls, cfg, repeats, args.tau)
            except S.Unavailable as why:
                reason = str(why)
                key = (cls.name, reason)
                if key not in skipped:
                    print(f"skip: {cls.name}: {reason}", flush=True)
                skipped.setdefault(key, []).append(task.name)
                continue
            except Exception as err:  # a crash is a result too
                row = {
                    "problem": task.name,
                    "solver": cls.name,
                    "short": cls.short,
                    "error": f"{type(err).__name__}: {err}"[:300],
                    "reached": False,
                }
                print(f"error: {cls.name} on {task.name}: {row['error']}", flush=True)
            rows.append(row)
        print(
            f"done {task.name} (n={task.n}) in {time.perf_counter() - t_task:.1f}s",
            flush=True,
        )
    return {
        "config": dict(
            vars(cfg),
            tau=args.tau,
            repeats=repeats,
            quick=args.quick,
            full=args.full,
            suite=args.suite,
            dtype=args.dtype,
        ),
        "versions": _versions(),
        "machine": _machine(),
        "problems": [
            {
                "name": t.name,
                "family": t.family,
                "n": t.n,
                "f_star": t.f_star,
                "f_ref": t.f_ref,
            }
            for t in tasks
        ],
        "solvers": [{"name": c.name, "short": c.short} for c in classes],
        "skipped": [
            {"solver": s, "reason": r, "problems": ps} for (s, r), ps in skipped.items()
        ],
        "rows": rows,
    }


# ---------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------


def _fmt(x: Any, kind: str = "g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if kind == "ms":
        return f"{1e3 * x:.1f}"
    if kind == "s":
        return f"{x:.2f}"
    if kind == "us":
        return f"{x:.0f}"
    if kind == "e":
        return f"{x:.1e}"
    return str(x)


def _ran(doc: dict) -> list[dict]:
    shorts = {r["short"] for r in doc["rows"]}
    return [s for s in doc["solvers"] if s["short"] in shorts]


def summary_table(doc: dict) -> str:
    """Per-solver aggregate, relative to scipy on the problems both ran."""
    rows = [r for r in doc["rows"] if "error" not in r]
    by = {(r["problem"], r["short"]): r for r in rows}
    lines = [
        "| solver | ran | reached target | evals to target (geo-mean vs scipy) "
        "| time to target (geo-mean vs scipy) | warm time (geo-mean vs scipy) "
        "| first call total [s] | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    errors = {}
    for r in doc["rows"]:
        if "error" in r:
            errors[r["short"]] = errors.get(r["short"], 0) + 1
    for s in _ran(doc):
        mine = [r for r in rows if r["short"] == s["short"]]
        reached = sum(r["reached"] for r in mine)
        ev, tt, wt = [], [], []
        for r in mine:
            ref = by.get((r["problem"], "scipy"))
            if ref is None:
                continue
            if r["reached"] and ref["reached"]:
                ev.append(r["evals_to_target"] / ref["evals_to_target"])
                tt.append(r["s_to_target"] / ref["s_to_target"])
            wt.append(r["warm_s"] / ref["warm_s"])

        def gm(v):
            return f"{math.exp(np.mean(np.log(v))):.2f}x" if v else "-"

        first = sum(r["first_s"] for r in mine)
        lines.append(
            f"| {s['name']} | {len(mine)} | {reached} | {gm(ev)} | {gm(tt)} "
            f"| {gm(wt)} | {first:.1f} | {errors.get(s['short'], 0)} |"
        )
    return "\n".join(lines)


def matrix_table(doc: dict, key: str, kind: str, title: str) -> str:
    """Problems x solvers table of one metric; ✗ marks "target not reached"."""
    solvers = _ran(doc)
    by = {(r["problem"], r["short"]): r for r in doc["rows"]}
    head = "| problem | n | " + " | ".join(s["short"] for s in solvers) + " |"
    lines = [f"**{title}**", "", head, "|---|---|" + "---|" * len(solvers)]
    for p in doc["problems"]:
        cells = []
        for s in solvers:
            r = by.get((p["name"], s["short"]))
            if r is None:
                cells.append("n/a")
            elif "error" in r:
                cells.append("err")
            elif key.endswith("to_target") and not r["reached"]:
                cells.append("✗")
            else:
                cells.append(_fmt(r.get(key), kind))
        lines.append(f"| {p['name']} | {p['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(doc: dict) -> str:
    """Long-format table with every metric."""
    lines = [
        "| problem | solver | f - f* | ‖g‖∞ | nit | nfev | njev | warm [ms] "
        "| first [s] | evals→target | ms→target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['problem']} | {r['short']} | error: {r['error'][:60]} |||||||||"
            )
            continue
        lines.append(
            f"| {r['problem']} | {r['short']} | {_fmt(r['f_err'], 'e')} "
            f"| {_fmt(r['grad_norm'], 'e')} | {r['nit']} | {r['nfev']} | {r['njev']} "
            f"| {_fmt(r['warm_s'], 'ms')} | {_fmt(r['first_s'], 's')} "
            f"| {_fmt(r['evals_to_target'])} | {_fmt(r['s_to_target'], 'ms')} |"
        )
    return "\n".join(lines)


def report(doc: dict) -> str:
    """The markdown report (what is printed and written to results.md)."""
    v = doc["versions"]
    c = doc["config"]
    parts = [
        "## Setup",
        "",
        f"Machine: {doc['machine']}. Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + ".",
        f"{c.get('dtype', 'float64')}; gtol={c['gtol']:g}, ftol={c['ftol']:g} (where a solver has "
        f"one), maxiter={c['maxiter']}, memory 10, warm time = median of "
        f"{c['repeats']}; target: f <= f_scipy + {c['tau']:g} (f0 - f_scipy).",
        "",
    ]
    if doc["skipped"]:
        parts += ["Skipped:", ""]
        for s in doc["skipped"]:
            parts.append(
                f"- {s['solver']}: {s['reason']} ({len(s['problems'])} problems)"
            )
        parts.append("")
    parts += [
        "## Summary",
        "",
        summary_table(doc),
        "",
        matrix_table(
            doc, "evals_to_target", "g", "Evaluations to target (✗: not reached)"
        ),
        "",
        matrix_table(doc, "warm_s", "ms", "Warm solve time [ms]"),
        "",
        matrix_table(doc, "first_s", "s", "First call (compile included) [s]"),
        "",
        matrix_table(doc, "us_per_eval", "us", "Warm time per evaluation [µs]"),
        "",
    ]
    return "\n".join(parts)


def write(doc: dict, out: Path, plot: bool) -> None:
    """Write results.json, results.md and (optionally) profile.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=float))
    md = report(doc) + "\n## All metrics\n\n" + detail_table(doc) + "\n"
    (out / "results.md").write_text(md)
    if not plot:
        return
    from benchmarks import _profile

    solvers = _ran(doc)
    by = {(r["problem"], r["short"]): r for r in doc["rows"]}

    def cost(key):
        arr = np.full((len(doc["problems"]), len(solvers)), np.nan)
        for i, p in enumerate(doc["problems"]):
            for j, s in enumerate(solvers):
                r = by.get((p["name"], s["short"]))
                if r is None:
                    continue
                arr[i, j] = r[key] if r.get("reached") else np.inf
        return arr

    _profile.plot(
        {
            "evaluations to target": cost("evals_to_target"),
            "seconds to target": cost("s_to_target"),
        },
        [s["short"] for s in solvers],
        out / "profile.png",
        f"Performance profiles (Dolan & Moré), {doc['machine']}",
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``python -m benchmarks``, ``nnxopt bench``)."""
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    t0 = time.perf_counter()
    doc = run(args)
    doc["total_s"] = time.perf_counter() - t0
    print()
    print(report(doc))
    write(doc, args.out, plot=not args.no_plot)
    print(
        f"wrote {args.out}/results.json, results.md"
        + ("" if args.no_plot else ", profile.png")
        + f" in {doc['total_s']:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
