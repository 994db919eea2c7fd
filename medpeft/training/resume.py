"""Checkpoints of a run and resuming a killed one (``scripts/train.py --resume RUN_DIR``).

One Lightning ``ModelCheckpoint`` (:class:`RunCheckpoint`) writes both files of a run: ``best-*.ckpt`` (the top
validation Dice) and ``last.ckpt``. After a validation it saves the best file first (when the score improved) and
``last.ckpt`` right after it, in the same hook, so ``last.ckpt`` always records the best-checkpoint tracking of that
validation: a run killed at any point after it resumes knowing which file is best, and ``save_top_k=1`` keeps exactly
one best file. (A separate callback that wrote ``last.ckpt`` before ``ModelCheckpoint`` had seen the validation
resumed with the previous best: it named a file already deleted, or let a later, worse epoch become "best".)
``last.ckpt`` is also written every ``checkpoint_every_n_steps`` optimizer steps, at the end of training and when
training raises, unless the weights are no longer finite (the previous ``last.ckpt`` is the last good state then).
Every write is atomic (a temporary file, then a rename), so a SIGKILL during a write leaves the previous file intact;
a SIGKILL cannot be caught, so a killed run loses at most the steps since the last write. Resuming loads the run's own
``config.yaml``, checks that the data still split the same way, and continues from ``last.ckpt`` with Lightning
(``fit(ckpt_path=...)``).

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
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from medpeft.io import atomic_output

__all__ = [
    "LAST_CHECKPOINT",
    "RunCheckpoint",
    "checkpoint_step",
    "find_resume_checkpoint",
    "restore_log_history",
]

#: The checkpoint a run resumes from, relative to its directory.
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` keeping the best ``val/dice`` checkpoint and ``last.ckpt``, written atomically.

    ``best-epoch{E}-step{S}.ckpt`` and ``last.ckpt`` are saved at the end of every validation (the best one only when
    ``val/dice`` improved), ``last.ckpt`` alone every ``every_n_steps`` optimizer steps (``0``: never), at the end of
    training when the last validation did not save that step, and when ``fit`` raises (see the module docstring).

    Args:
        dirpath: The run's ``checkpoints`` folder.
        every_n_steps: Step interval of the extra ``last.ckpt`` writes.
    """

    def __init__(self, dirpath: str | os.PathLike[str], every_n_steps: int) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best-epoch{epoch:03d}-step{step:06d}",
            auto_insert_metric_name=False,  # "val/dice" in a file name would create a sub-directory
            monitor="val/dice",
            mode="max",
            save_top_k=1,
            save_last=True,
            save_on_train_epoch_end=False,  # after each validation, in the hook that saw it
            enable_version_counter=False,  # last.ckpt is overwritten, never last-v1.ckpt
        )
        self.every_n_steps = every_n_steps
        self._last_saved_step: int | None = None

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        partial = Path(filepath).with_name(f".{Path(filepath).name}.partial")
        super()._save_checkpoint(trainer, str(partial))  # every rank calls it, rank 0 writes, then a barrier
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_checkpoint_saved = filepath

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_saved_step = trainer.global_step

    def _save_last_only(self, trainer: pl.Trainer) -> None:
        # Lightning skips a validation's save at a step it already saved; a last-only write must not count as one
        saved_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = saved_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        step = trainer.global_step
        periodic = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if periodic and not trainer.fast_dev_run and self._last_saved_step != step:
            self._save_last_only(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)  # the best file and last.ckpt when val/dice improved
        if not self._should_skip_saving_checkpoint(trainer) and self._last_saved_step != trainer.global_step:
            self._save_last_only(trainer)  # Lightning writes last.ckpt only with a best file; here after every one

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the final state when max_steps stopped training after the last validation
        if not trainer.fast_dev_run and self._last_saved_step != trainer.global_step:
            self._save_last_only(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        state = [*pl_module.parameters(), *pl_module.buffers()]
        if not all(torch.isfinite(t).all() for t in state if t.is_floating_point()):
            pl.utilities.rank_zero_warn(
                f"{type(exception).__name__} with non-finite weights or statistics: checkpoints/last.ckpt is left as "
                f"it was (step {self._last_saved_step}), the last finite state"
            )
            return
        self._save_last_only(trainer)


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
