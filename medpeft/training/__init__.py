"""Training: the typed experiment config, the LightningModule, and the train-then-test run behind ``scripts/train.py``.

>>> from medpeft.training import load_config
>>> cfg = load_config("configs/demo_lora.yaml", ["trainer.max_epochs=1"])  # doctest: +SKIP
"""

from __future__ import annotations

from medpeft.training.config import (
    PEFT_METHODS,
    AdapterConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    load_config,
    save_config,
)
from medpeft.training.module import SegmentationModule
from medpeft.training.run import main

__all__ = [
    "PEFT_METHODS",
    "AdapterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "SegmentationModule",
    "load_config",
    "main",
    "save_config",
]
