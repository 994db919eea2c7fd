"""``train_images_per_second`` times training steps only: a slow checkpoint write does not lower it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from medpeft.experiment.config import load_config
from medpeft.training.resume import RunCheckpoint
from medpeft.training.run import build_trainer

REPO = Path(__file__).resolve().parents[2]
BATCH = 4
WRITE_SECONDS = 0.2


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch["image"]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_checkpoint_writes_are_not_timed_as_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save = RunCheckpoint._save_checkpoint
    writes = []

    def slow_save(self: RunCheckpoint, trainer: pl.Trainer, filepath: str) -> None:
        time.sleep(WRITE_SECONDS)  # a large checkpoint on a slow disk
        writes.append(trainer.global_step)
        save(self, trainer, filepath)

    monkeypatch.setattr(RunCheckpoint, "_save_checkpoint", slow_save)
    overrides = ["checkpoint_every_n_steps=1", "trainer.max_steps=12", "trainer.limit_val_batches=0",
                 "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]  # fmt: skip
    cfg = load_config(REPO / "configs" / "demo_tcur.yaml", overrides)
    trainer, _, throughput = build_trainer(cfg, tmp_path)
    batches = [{"image": torch.randn(BATCH, 8)} for _ in range(12)]
    trainer.fit(_Tiny(), train_dataloaders=DataLoader(batches, batch_size=None))
    assert len(writes) >= 6  # the writes happened, every step after the timing warm-up
    # counted, each step would take over WRITE_SECONDS: at most BATCH / WRITE_SECONDS = 20 images per second
    assert throughput.images_per_second > 5 * BATCH / WRITE_SECONDS
