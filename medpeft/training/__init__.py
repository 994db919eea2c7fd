"""Training: the typed experiment config, the LightningModule, and the train-then-test run behind ``scripts/train.py``.

The run itself is :func:`medpeft.training.run.main`; it is not imported here, because it uses
:mod:`medpeft.evaluation`, which in turn builds networks with this package's config and network modules.

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
    "save_config",
]
