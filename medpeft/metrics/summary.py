"""Aggregate per-case scores into per-class and overall mean ± std, counting what was left out.

Conventions (recorded in every ``summary.json``):

* A class mean averages that class's defined scores over cases; the overall mean averages the class means (the
  way Synapse and ACDC tables average organs / structures).
* The overall std is the sample std (ddof = 1) over cases of the per-case score, i.e. the mean over that case's
  classes with a defined score. A per-class std is over that class's defined cases.
* Undefined scores (NaN, see :mod:`medpeft.metrics.scores`) never enter a mean; ``n_excluded`` counts them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medpeft.metrics.scores import DEFINITIONS, METRIC_NAMES, is_defined

__all__ = ["mean_std", "per_case_means", "summarize_scores"]


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None, int]:
    """Mean and sample std (ddof = 1; ``None`` for fewer than two values) of the defined values, and their count."""
    kept = [float(v) for v in values if is_defined(v)]
    if not kept:
        return None, None, 0
    return statistics.fmean(kept), (statistics.stdev(kept) if len(kept) > 1 else None), len(kept)


def per_case_means(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, float]:
    """``{case: mean over its classes of the defined scores}``; cases with no defined score are omitted."""
    by_case: dict[str, list[float]] = {}
    for row in rows:
        if is_defined(row[metric]):
            by_case.setdefault(str(row["case"]), []).append(float(row[metric]))
    return {case: statistics.fmean(values) for case, values in by_case.items()}


def summarize_scores(
    rows: Sequence[Mapping[str, Any]], protocol: str, distance_unit: str, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Summarise per-case rows of :func:`~medpeft.metrics.scores.case_scores` (each with a ``"case"`` key).

    Args:
        rows: One row per case and foreground class.
        protocol: The protocol the rows were scored with.
        distance_unit: ``"mm"``, ``"px"`` or ``"voxel"``.
        class_names: Names of classes ``0 .. K-1`` (background first); ``None`` names them by index.

    Returns:
        ``{"protocol", "distance_unit", "definitions", "n_cases", "overall": {metric: {"mean", "std", "n_cases",
        "n_excluded"}}, "per_class": {"<c>": {"name", metric: {"mean", "std", "n", "n_excluded"}}}}``; a mean or
        std is ``None`` where nothing was defined.
    """
    classes = sorted({int(row["class"]) for row in rows})
    per_class: dict[str, dict[str, Any]] = {}
    for c in classes:
        entry: dict[str, Any] = {"name": class_names[c] if class_names else str(c)}
        class_rows = [row for row in rows if int(row["class"]) == c]
        for metric in METRIC_NAMES:
            mean, std, n = mean_std(row[metric] for row in class_rows)
            entry[metric] = {"mean": mean, "std": std, "n": n, "n_excluded": len(class_rows) - n}
        per_class[str(c)] = entry
    overall: dict[str, Any] = {}
    for metric in METRIC_NAMES:
        class_means = [per_class[str(c)][metric]["mean"] for c in classes]
        case_means = list(per_case_means(rows, metric).values())
        _, std, n_cases = mean_std(case_means)
        overall[metric] = {
            "mean": mean_std(class_means)[0],
            "std": std,
            "n_cases": n_cases,
            "n_excluded": sum(per_class[str(c)][metric]["n_excluded"] for c in classes),
        }
    return {
        "protocol": protocol,
        "distance_unit": distance_unit,
        "definitions": DEFINITIONS[protocol],
        "n_cases": len({str(row["case"]) for row in rows}),
        "overall": overall,
        "per_class": per_class,
    }
