"""An experiment's description and the network it builds, shared by training, evaluation and prediction.

- :mod:`~medpeft.experiment.config`: the typed YAML config (``data``, ``model``, ``adapter``, ``optim``, ``loss``,
  ``trainer``), validated before any work;
- :mod:`~medpeft.experiment.network`: the segmenter a config describes, with its fine-tuning method applied.

It sits below :mod:`medpeft.evaluation` and :mod:`medpeft.training`, which both rebuild networks from configs, so
neither has to import the other's building blocks (``training`` uses ``evaluation`` to score the test split).

>>> from medpeft.experiment import load_config
>>> cfg = load_config("configs/demo_lora.yaml", ["trainer.max_epochs=1"])  # doctest: +SKIP
"""

from __future__ import annotations

from medpeft.experiment.config import (
    TRAINING_MODES,
    AdapterConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    is_adapter_method,
    load_config,
    save_config,
)
from medpeft.experiment.network import apply_finetuning, segmenter_from_config

__all__ = [
    "TRAINING_MODES",
    "AdapterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "apply_finetuning",
    "is_adapter_method",
    "load_config",
    "save_config",
    "segmenter_from_config",
]
