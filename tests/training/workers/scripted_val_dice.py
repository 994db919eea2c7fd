"""Worker of ``test_resume.py``: ``scripts/train.py``'s ``main`` with a scripted validation Dice per epoch, killed
(SIGKILL, which nothing can catch) at the start of a chosen epoch.

The ``val/dice`` of epoch ``e`` is ``SCORES[e]``, whatever the network does, so which checkpoint is best is known in
advance. ``MEDPEFT_TEST_KILL_EPOCH=E`` kills the process when epoch ``E`` starts: after epoch ``E - 1``'s validation
and its saves, before any later write.

Usage: ``python scripted_val_dice.py TRAIN_ARGS...`` (those of ``scripts/train.py``).
"""

from __future__ import annotations

import os
import signal
import sys

from medpeft.training import run
from medpeft.training.module import SegmentationModule

SCORES = (0.1, 0.5, 0.3, 0.2)


def _scripted_val_dice(self: SegmentationModule) -> None:
    self.log("val/dice", SCORES[self.current_epoch], prog_bar=True)
    self.val_dice.reset()


def _maybe_kill(self: SegmentationModule) -> None:
    if str(self.current_epoch) == os.environ.get("MEDPEFT_TEST_KILL_EPOCH"):
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    SegmentationModule.on_validation_epoch_end = _scripted_val_dice
    SegmentationModule.on_train_epoch_start = _maybe_kill
    run.main(sys.argv[1:])
