"""The command behind ``scripts/compare.py``: find finished runs, compare them, write the tables and the plot.

Example:
    .. code-block:: bash

        python scripts/compare.py runs/sweep/demo_tcur --out runs/comparison --reference full
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from medpeft.reports.comparison import Comparison, summarize_runs
from medpeft.reports.runs import ComparisonError, find_run_dirs, load_run
from medpeft.reports.tables import render_markdown, write_comparison

__all__ = ["build_parser", "compare", "main"]


def compare(
    paths: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    reference: str | None = None,
    title: str | None = None,
) -> Comparison:
    """Find the finished runs under ``paths``, summarize them and, if ``out_dir`` is given, write
    ``comparison.md``, ``comparison.csv``, ``comparison.tex`` and ``pareto.png`` there.

    Args:
        paths: Run directories or folders searched recursively for ``metrics.json``.
        out_dir: Folder for the comparison files; ``None`` writes nothing.
        reference: Method the Wilcoxon tests compare against (see :func:`summarize_runs`).
        title: Title of the tables and the plot.

    Raises:
        ComparisonError: No finished run was found, or the runs cannot be compared (see :func:`summarize_runs`).
    """
    paths = [Path(p) for p in paths]
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        raise ComparisonError(f"no finished run (metrics.json) found under {', '.join(map(str, paths))}")
    comparison = summarize_runs([load_run(d) for d in run_dirs], reference=reference)
    if out_dir is not None:
        write_comparison(comparison, out_dir, title=title)
    return comparison


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``scripts/compare.py``."""
    parser = argparse.ArgumentParser(
        prog="compare.py",
        description=(
            "Compare finished runs of scripts/train.py, grouped by their name (seeds averaged): writes "
            "comparison.md, comparison.csv, comparison.tex and pareto.png to --out and prints the markdown table. "
            "Exits with status 2 when no run is found or the runs mix datasets, protocols or distance units."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or folders searched recursively")
    parser.add_argument("--out", default="runs/comparison", metavar="DIR", help="output folder (runs/comparison)")
    parser.add_argument(
        "--reference", metavar="NAME", help="method the Wilcoxon tests compare against (default: full if present)"
    )
    parser.add_argument("--title", metavar="TEXT", help="table title (markdown heading, LaTeX caption, plot title)")
    return parser


def main(argv: list[str] | None = None) -> Comparison:
    """Run ``compare.py RUN_DIR... [--out DIR] [--reference NAME] [--title TEXT]``.

    Raises:
        SystemExit: With status 2 on bad arguments or runs that cannot be compared (one line on stderr).
    """
    args = build_parser().parse_args(argv)
    try:
        comparison = compare(args.runs, args.out, reference=args.reference, title=args.title)
    except ComparisonError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(render_markdown(comparison, title=args.title), end="")
    print(f"\nwritten to {args.out}: comparison.md, comparison.csv, comparison.tex, pareto.png")
    return comparison
