"""Segmenting new images with a trained run or a task file (``scripts/predict.py``)."""

from medpeft.prediction.command import main
from medpeft.prediction.images import load_network_input, predict_image, write_mask

__all__ = ["load_network_input", "main", "predict_image", "write_mask"]
