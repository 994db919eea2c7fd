"""Fixtures shared by the end-to-end tests: ``scripts/train.py`` as a module and the overrides of a tiny run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]

# 32 px, batch 4, two training batches and one validation batch (the test split is always scored whole): a few
# seconds per run on CPU.
TINY_RUN = (
    "data.image_size=32",
    "data.batch_size=4",
    "data.augmentation=none",
    "model.pretrained=false",
    "trainer.max_steps=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
)


@pytest.fixture(scope="session")
def tiny_run() -> list[str]:
    """``--set`` overrides that make any shipped config a tiny CPU run (see :data:`TINY_RUN`)."""
    return list(TINY_RUN)


@pytest.fixture(scope="module")
def train_script() -> ModuleType:
    """``scripts/train.py`` imported as a module, so tests call its ``main`` without a subprocess."""
    spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
