"""Reports over finished runs: method comparison tables (markdown, CSV, LaTeX) and the Dice-vs-parameters plot.

>>> from medpeft.reports import compare
>>> comparison = compare(["runs/sweep/demo_tcur"], out_dir="runs/comparison")  # doctest: +SKIP
"""

from __future__ import annotations

from medpeft.reports.compare import compare
from medpeft.reports.comparison import Comparison, MethodSummary, paired_wilcoxon, summarize_runs
from medpeft.reports.pareto import pareto_front, plot_pareto
from medpeft.reports.runs import ComparisonError, Run, find_run_dirs, load_run, read_per_case
from medpeft.reports.tables import render_csv, render_latex, render_markdown, write_comparison

__all__ = [
    "Comparison",
    "ComparisonError",
    "MethodSummary",
    "Run",
    "compare",
    "find_run_dirs",
    "load_run",
    "paired_wilcoxon",
    "pareto_front",
    "plot_pareto",
    "read_per_case",
    "render_csv",
    "render_latex",
    "render_markdown",
    "summarize_runs",
    "write_comparison",
]
