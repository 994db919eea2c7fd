"""Training: the LightningModule, resumable checkpoints, the train-then-test run behind ``scripts/train.py`` and
method x seed sweeps. The config and the network builder live one level down, in :mod:`medpeft.experiment`.

The run itself is :func:`medpeft.training.run.main` (not imported here: it pulls in Lightning's loggers and
:mod:`medpeft.evaluation`).
"""

from __future__ import annotations

from medpeft.training.module import SegmentationModule

__all__ = ["SegmentationModule"]
