"""Resuming a killed run in its own directory (``scripts/train.py --resume RUN_DIR``).

A run writes ``checkpoints/last.ckpt`` every ``checkpoint_every_n_steps`` optimizer steps, after every validation
and when training raises (Ctrl-C, SIGTERM from a scheduler, a non-finite loss). A SIGKILL cannot be caught, so a
killed run loses at most the steps since the last of these. Resuming loads the run's own ``config.yaml``, checks
that the data still split the same way, and continues from ``last.ckpt`` with Lightning (``fit(ckpt_path=...)``).

What is restored exactly: every weight, the optimizer (AdamW moments) and learning-rate schedule, the epoch and
step counters, the best-checkpoint tracking, and the log history (``csv/metrics.csv`` keeps the rows logged before
the checkpoint's step and drops those after it, which the resumed run logs again: no row lost or repeated).
What is not: the random streams of the training loader. After the resume the shuffle order and the augmentation
draws restart from the run's seed instead of continuing where they were, so a resumed run sees the same data in a
different order and ends close to, not bit-equal with, an uninterrupted one (measured in
``tests/training/test_resume.py``). TensorBoard event files of the killed segment stay beside the new ones.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from medpeft.io import atomic_output

__all__ = ["LAST_CHECKPOINT", "LastCheckpoint", "checkpoint_step", "find_resume_checkpoint", "restore_log_history"]

#: The checkpoint a run resumes from, relative to its directory.
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class LastCheckpoint(pl.Callback):
    """Write ``<run_dir>/checkpoints/last.ckpt`` atomically: every ``every_n_steps`` optimizer steps (``0``: never),
    after every validation, at the end of training, and when ``fit`` raises.

    Atomic (a temporary file, then a rename), so a SIGKILL during the write leaves the previous ``last.ckpt``
    intact; Lightning's own ``save_last`` writes in place.

    Args:
        run_dir: The run directory.
        every_n_steps: Step interval.
    """

    def __init__(self, run_dir: str | os.PathLike[str], every_n_steps: int) -> None:
        self.path = Path(run_dir) / LAST_CHECKPOINT
        self.every_n_steps = every_n_steps
        self._saved_step: int | None = None

    def _save(self, trainer: pl.Trainer) -> None:
        temporary = self.path.with_name(f".{self.path.name}.partial")
        trainer.save_checkpoint(temporary, weights_only=False)  # the whole state; every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            os.replace(temporary, self.path)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the final state when max_steps stopped training after the last save (the last epoch's validation saved it
        # otherwise: no second copy of the same step)
        if self._saved_step != trainer.global_step:
            self._save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._save(trainer)


def find_resume_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """``run_dir/checkpoints/last.ckpt`` if the run wrote one, else ``None`` (killed before its first save)."""
    path = Path(run_dir) / LAST_CHECKPOINT
    return path if path.is_file() else None


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The optimizer step (``global_step``) a Lightning checkpoint was saved at; read with ``weights_only=True``."""
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def restore_log_history(logger: CSVLogger, before_step: int) -> int:
    """Keep the rows of ``logger``'s existing ``metrics.csv`` logged before ``before_step`` and make the logger
    append to them; return how many rows were kept.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts. This reads the file first, lets the
    writer start, then writes the kept rows back with their header and tells the writer those columns exist, so
    its later saves append (or widen the header) instead of starting over.
    """
    path = Path(logger.log_dir) / "metrics.csv"
    rows: list[dict[str, str]] = []
    keys: list[str] = []
    if path.is_file():
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            keys = sorted(reader.fieldnames or [])  # Lightning writes its columns sorted and appends in that order
            rows = [row for row in reader if row.get("step") and int(float(row["step"])) < before_step]
    writer = logger.experiment  # deletes metrics.csv
    if keys:
        with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=keys)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = keys
    return len(rows)
