"""Evaluate a trained network on a held-out split: inference, per-case scores, summaries and overlays."""

from medpeft.evaluation.checkpoint import find_run_checkpoint, load_network_state, load_trained_network
from medpeft.evaluation.evaluator import CaseView, EvaluationResult, evaluate_split
from medpeft.evaluation.inference import predict_images, predict_volume
from medpeft.evaluation.report import PER_CASE_COLUMNS, json_safe, pick_examples, write_evaluation

__all__ = [
    "PER_CASE_COLUMNS",
    "CaseView",
    "EvaluationResult",
    "evaluate_split",
    "find_run_checkpoint",
    "json_safe",
    "load_network_state",
    "load_trained_network",
    "pick_examples",
    "predict_images",
    "predict_volume",
    "write_evaluation",
]
