"""The ``nnxopt`` command line: ``nnxopt demo`` and ``nnxopt bench``."""

from __future__ import annotations

import sys

USAGE = """usage: nnxopt {demo,bench} [options]

  demo   train a 1-D Poisson PINN with Adam, then L-BFGS (nnxopt demo --help)
  bench  run the benchmarks (from a checkout of the repository)
"""


def main(argv: list[str] | None = None) -> int:
    """Run ``nnxopt COMMAND [options]``; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from ._demo import run

        run(rest)
        return 0
    if command == "bench":
        try:
            import benchmarks  # type: ignore[import-not-found]
        except ImportError:
            print(
                "nnxopt bench: the benchmarks live in the repository, not in the "
                "installed package. From a checkout run `python -m nnxopt bench` "
                "in the repository root (or `python -m benchmarks`), with the "
                "bench extra installed: pip install 'nnxopt[bench]'.",
                file=sys.stderr,
            )
            return 2
        return int(benchmarks.main(rest) or 0)
    print(f"nnxopt: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
