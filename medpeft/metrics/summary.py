"""Aggregate per-case scores into per-class and overall mean ± std, counting what was left out.

Conventions (recorded in every ``summary.json``):

* A class mean averages that class's defined scores over cases; the overall mean averages the class means (the
  way Synapse and ACDC tables average organs / structures).
* The overall std is the sample std (ddof = 1) over cases of the per-case score, i.e. the mean over that case's
  classes with a defined score. A per-class std is over that class's defined cases.
* Undefined scores (NaN, see :mod:`medpeft.metrics.scores`) never enter a mean; ``n_excluded`` counts them.
* Cases whose target lacks a class (a normal BUSI scan, a slice without an organ) are reported apart, per class
  and overall: ``empty_target`` counts them and those with a false positive (any predicted voxel of the class).
  ``dice_all`` is the Dice mean over *every* case, with such a case scored 1 when the prediction is empty too
  and 0 otherwise (the rule validation Dice selects checkpoints by), so a method that paints lesions into normal
  scans cannot hide it.
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


def _dice_all(row: Mapping[str, Any]) -> float:
    """Dice with an empty target scored 1 for an empty prediction and 0 otherwise."""
    if int(row["gt_voxels"]) == 0:
        return 1.0 if int(row["pred_voxels"]) == 0 else 0.0
    return float(row["dice"])


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
        ``{"empty_target": {"n", "false_positives"}, "dice_all", "protocol", "distance_unit", "definitions",
        "n_cases", "overall": {metric: {"mean", "std", "n_cases", "n_excluded"}}, "per_class": {"<c>": {"name",
        metric: {"mean", "std", "n", "n_excluded"}, "empty_target": {...}, "dice_all"}}}`` (module docstring); a
        mean or std is ``None`` where nothing was defined.
    """
    classes = sorted({int(row["class"]) for row in rows})
    per_class: dict[str, dict[str, Any]] = {}
    for c in classes:
        entry: dict[str, Any] = {"name": class_names[c] if class_names else str(c)}
        class_rows = [row for row in rows if int(row["class"]) == c]
        for metric in METRIC_NAMES:
            mean, std, n = mean_std(row[metric] for row in class_rows)
            entry[metric] = {"mean": mean, "std": std, "n": n, "n_excluded": len(class_rows) - n}
        empty = [row for row in class_rows if int(row["gt_voxels"]) == 0]
        entry["empty_target"] = {"n": len(empty), "false_positives": sum(int(row["pred_voxels"]) > 0 for row in empty)}
        entry["dice_all"] = mean_std(_dice_all(row) for row in class_rows)[0]
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
    empty_totals = {
        key: sum(per_class[str(c)]["empty_target"][key] for c in classes) for key in ("n", "false_positives")
    }
    return {
        "empty_target": empty_totals,
        "dice_all": mean_std(per_class[str(c)]["dice_all"] for c in classes)[0],
        "protocol": protocol,
        "distance_unit": distance_unit,
        "definitions": DEFINITIONS[protocol],
        "n_cases": len({str(row["case"]) for row in rows}),
        "overall": overall,
        "per_class": per_class,
    }
