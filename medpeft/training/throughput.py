"""Training speed and memory, measured during ``fit``: images per second and peak GPU memory."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

__all__ = ["TrainingThroughput"]


class TrainingThroughput(pl.Callback):
    """Time each training step (forward, backward, optimizer step; data loading and checkpoint writes excluded) and
    track peak memory.

    The window is ``on_train_batch_start`` -> ``on_train_batch_end`` of this callback, which must come before the
    checkpoint callback (``build_trainer`` puts it first; Lightning runs every ``ModelCheckpoint`` last), so a
    periodic ``last.ckpt`` write (largest for ``full``) never counts as training time. Lightning's
    ``ThroughputMonitor`` is not used for this figure: it times from batch end to batch end, data loading included,
    and a checkpoint written after a validation falls into its next training interval.

    The first ``warmup_steps`` steps are not timed (CUDA context, cuDNN autotuning, allocator growth). On a CUDA
    device the clock is read after ``torch.cuda.synchronize()`` so asynchronous kernels are counted.

    Args:
        warmup_steps: Steps left out of the timing.

    Attributes:
        images_per_second: Training images per second of timed steps; ``None`` if no step was timed.
        peak_memory_mb: Peak memory allocated by PyTorch on the GPU during ``fit`` (MiB); ``None`` on CPU.
    """

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.images_per_second: float | None = None
        self.peak_memory_mb: float | None = None
        self._seconds = 0.0
        self._images = 0
        self._started = 0.0
        self._steps = 0

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self._started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self._steps += 1
        if self._steps > self.warmup_steps:
            self._seconds += time.perf_counter() - self._started
            self._images += len(batch["image"])
            self.images_per_second = self._images / self._seconds if self._seconds > 0 else None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            self.peak_memory_mb = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
