"""Segmentation scores per case and class, their summaries, and the efficiency figures PEFT tables report."""

from medpeft.metrics.efficiency import efficiency_figures
from medpeft.metrics.scores import (
    DEFINITIONS,
    METRIC_NAMES,
    PROTOCOLS,
    Protocol,
    binary_scores,
    case_scores,
    distance_unit,
    is_defined,
)
from medpeft.metrics.summary import mean_std, per_case_means, summarize_scores

__all__ = [
    "DEFINITIONS",
    "METRIC_NAMES",
    "PROTOCOLS",
    "Protocol",
    "binary_scores",
    "case_scores",
    "distance_unit",
    "efficiency_figures",
    "is_defined",
    "mean_std",
    "per_case_means",
    "summarize_scores",
]
