"""Datasets, splits and the Lightning DataModule of medpeft.

Importing this package registers the built-in datasets: ``"isic2018"`` (real ISIC 2018 Task 1 data, never
downloaded or generated), ``"busi"`` (BUSI breast ultrasound), ``"acdc"`` and ``"synapse"`` (3D, trained on 2D slices; their test volumes
come from :func:`~medpeft.data.volumes.build_volume_dataset`), ``"demo"`` (synthetic dermoscopy target task) and ``"demo_source"`` (synthetic source task
for encoder pre-training).

.. code-block:: python

    from medpeft.data import SegmentationDataModule, build_dataset

    ds = build_dataset("isic2018", "datasets/isic2018", split="train", image_size=128, seed=0)
    item = ds[0]  # {"image": float32 [3, S, S] in [0, 1], "label": int64 [1, S, S], "name": "ISIC_0000000"}
    dm = SegmentationDataModule(dataset="demo", root="datasets/demo", image_size=128, batch_size=8)
"""

from __future__ import annotations

from medpeft.data.acdc import build_acdc
from medpeft.data.busi import build_busi
from medpeft.data.datamodule import SegmentationDataModule, SplitMismatchError
from medpeft.data.isic import build_isic2018
from medpeft.data.registry import (
    DATASETS,
    DatasetInfo,
    DatasetNotFoundError,
    SegmentationDataset,
    build_dataset,
    dataset_info,
    register_dataset,
)
from medpeft.data.splits import save_split_json, split_cases
from medpeft.data.synapse import build_synapse
from medpeft.data.synthetic import generate_demo_isic, generate_source_task
from medpeft.data.transforms import CaseFileError
from medpeft.data.volumes import VOLUME_DATASETS, build_volume_dataset, resize_in_plane

__all__ = [
    "DATASETS",
    "VOLUME_DATASETS",
    "CaseFileError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "SegmentationDataModule",
    "SegmentationDataset",
    "SplitMismatchError",
    "build_acdc",
    "build_busi",
    "build_dataset",
    "build_isic2018",
    "build_synapse",
    "build_volume_dataset",
    "dataset_info",
    "generate_demo_isic",
    "generate_source_task",
    "register_dataset",
    "resize_in_plane",
    "save_split_json",
    "split_cases",
]
