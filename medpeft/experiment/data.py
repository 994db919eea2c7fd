"""The data a config describes: its :class:`~medpeft.data.SegmentationDataModule`, built in this one place for
training, the final test and ``scripts/evaluate.py``, so all three see the same split."""

from __future__ import annotations

import json
import os
from pathlib import Path

from medpeft.data import SegmentationDataModule
from medpeft.experiment.config import Config

__all__ = ["datamodule_from_config", "read_split_file"]


def read_split_file(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """A run's ``split.json``: ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        ValueError: Naming the file, if it is not such a mapping.
    """
    try:
        split = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(split, dict) or not all(isinstance(v, list) for v in split.values()):
        raise ValueError(f"{path} is not a split file: expected {{'train': [...], 'val': [...], 'test': [...]}}")
    return split


def datamodule_from_config(
    cfg: Config,
    root: str | None = None,
    evaluation: bool = False,
    split_file: str | os.PathLike[str] | None = None,
) -> SegmentationDataModule:
    """The data module of ``cfg.data`` (not set up yet).

    Args:
        cfg: The run's config.
        root: Overrides ``data.root`` (the data moved since training).
        evaluation: No augmentation on any split and no cache (scoring reads each case once).
        split_file: A run's ``split.json``: every split keeps exactly the cases it lists (see ``recorded_split`` of
            :class:`~medpeft.data.SegmentationDataModule`).

    Raises:
        TypeError, ValueError: An unregistered dataset, or a ``data.options`` key its builder does not take.
    """
    data = cfg.data
    options = dict(data.options)
    if evaluation:
        options.pop("cache_rate", None)
    augment = True if data.augmentation is None else data.augmentation
    return SegmentationDataModule(
        dataset=data.dataset,
        root=root if root is not None else data.root,
        image_size=data.image_size,
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        seed=data.split_seed,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        augment=False if evaluation else augment,
        bad_cases=data.bad_cases,
        train_cases=data.train_cases,
        recorded_split=None if split_file is None else read_split_file(split_file),
        **options,
    )
