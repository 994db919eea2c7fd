"""Lightning DataModule over any registered segmentation dataset.

Lifecycle (Lightning conventions): ``__init__`` only stores and checks arguments (no I/O); ``prepare_data`` creates
data that can be created (the synthetic demo sets) and runs once per node; ``setup`` builds the train / val / test
datasets through :func:`~medpeft.data.registry.build_dataset` and records which case ids went where.

Decisions:

* ``setup`` builds all three splits whatever the stage, so :attr:`SegmentationDataModule.split` is always complete
  and can be saved with every run; building an uncached split only lists files. Only ``train`` and ``val`` use
  ``cache_rate``: the test split is read once, at the end.
* The test split is held out: it is never used for training or model selection (``val`` is).
* A broken case (unreadable or truncated file, unexpected mask values, image and mask of different sizes) is a
  :class:`~medpeft.data.transforms.CaseFileError` naming the file, by default (``bad_cases="error"``). With
  ``bad_cases="skip"`` setup reads every case once (a progress bar), drops the broken ones from their split and lists
  them in :attr:`SegmentationDataModule.skipped_cases`; the saved split holds only the cases that were used.
* This class is the one place that builds a split: training, the final test, ``scripts/evaluate.py`` (which passes
  the run's ``split.json`` as ``recorded_split``, so it scores exactly the cases the run held out, broken ones left
  out as in training, without reading every file again) and the per-volume scoring of 3D datasets
  (:meth:`SegmentationDataModule.volumes`).
* Loaders are ``monai.data.DataLoader``: it seeds the random transforms of every worker from the loader's generator,
  so augmentation is reproducible for any ``num_workers``. The training loader shuffles with a generator seeded by
  ``seed``; val / test loaders keep a fixed order and never augment.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from monai.data import DataLoader
from tqdm.auto import tqdm

from medpeft.data.augmentation import AugmentationSpec
from medpeft.data.registry import DATASETS, SegmentationDataset, build_dataset, dataset_info, make_dataset
from medpeft.data.splits import SPLIT_NAMES, save_split_json
from medpeft.data.transforms import CaseFileError
from medpeft.data.volumes import VOLUME_DATASETS, VolumeDataset, build_volume_dataset

__all__ = ["SegmentationDataModule", "SplitMismatchError"]


class SplitMismatchError(ValueError):
    """A recorded split (a run's ``split.json``) lists cases the dataset no longer has in that split."""


class SegmentationDataModule(pl.LightningDataModule):
    """Train / val / test loaders of a registered 2D segmentation dataset.

    Batches are ``{"image": float32 [B, C, S, S] in [0, 1], "label": int64 [B, 1, S, S], "name": list[str]}``.

    Args:
        dataset: Registered dataset name (``"isic2018"``, ``"demo"``, ``"demo_source"``, ...).
        root: Dataset folder; ``None`` uses the dataset's default (``datasets/demo`` for ``"demo"``).
        image_size: Side ``S`` of the square images and labels.
        batch_size: Batch size of all loaders.
        num_workers: Loader worker processes; ``0`` loads in the main process.
        seed: Seed of the split, of the training shuffle and of the augmentation draws.
        val_fraction: Fraction of the cases used for validation (when the dataset has no official validation set).
        test_fraction: Fraction of the cases held out for testing (when the dataset has no official test set).
        augment: Augmentation of the training split: ``True`` for the dataset's own policy, ``False`` for none, a
            policy name or a list of albumentations steps (:mod:`medpeft.data.augmentation`).
        cache_rate: Fraction of train / val cases kept in memory after loading and resizing (MONAI
            ``CacheDataset``); ``0`` reads files on every access.
        bad_cases: ``"error"``: a broken case stops the run with a :class:`~medpeft.data.transforms.CaseFileError`
            naming the file (when it is first read); ``"skip"``: every case is read once in ``setup`` and the broken
            ones are left out and listed in :attr:`skipped_cases`.
        train_cases: Train on only this many of the training split's cases (a label budget: the low-data regime,
            learning curves); ``None`` trains on all. A case is what the split counts: an image of a 2D dataset, a
            patient of a volume dataset (every slice of its volumes; ACDC: ED and ES). The cases are the first
            ``train_cases`` of a permutation drawn from ``seed``, so smaller budgets are subsets of larger ones;
            validation and test are unchanged.
        recorded_split: The split a run recorded (its ``split.json``: case ids per split). Each split keeps just
            those cases of the rebuilt one, with no new check of the files and no new label budget (the record
            already reflects both); a recorded case the rebuilt split lacks is a :class:`SplitMismatchError`.
        **dataset_options: Dataset-specific options passed to the dataset's builder (``data.options`` in a
            config), e.g. ``include_normal`` for BUSI; an option the builder does not take is a ``TypeError``.

    Raises:
        ValueError: If ``dataset`` is not registered, or a size / count argument is out of range.

    Example:
        >>> dm = SegmentationDataModule(dataset="demo", root="datasets/demo", batch_size=8)
        >>> dm.num_classes, dm.in_channels
        (2, 3)
    """

    def __init__(
        self,
        dataset: str = "demo",
        root: str | None = None,
        image_size: int = 128,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        augment: AugmentationSpec = True,
        cache_rate: float = 0.0,
        bad_cases: Literal["error", "skip"] = "error",
        train_cases: int | None = None,
        recorded_split: Mapping[str, Sequence[str]] | None = None,
        **dataset_options: Any,
    ) -> None:
        super().__init__()
        info = dataset_info(dataset)  # fails early, listing the registered names
        if bad_cases not in ("error", "skip"):
            raise ValueError(f"bad_cases must be 'error' or 'skip', got {bad_cases!r}")
        if image_size < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need image_size >= 1, batch_size >= 1 and num_workers >= 0, "
                f"got {image_size}, {batch_size} and {num_workers}"
            )
        if train_cases is not None and train_cases < 1:
            raise ValueError(f"train_cases must be >= 1 or None, got {train_cases}")
        builder = inspect.signature(DATASETS[dataset]).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in builder.values()):
            unknown = sorted(set(dataset_options) - set(builder))
            if unknown:
                raise ValueError(f"dataset {dataset!r} has no option(s) {unknown}; it takes: {sorted(builder)}")
        self.save_hyperparameters(ignore=["recorded_split"])
        self.dataset = dataset
        self.root = root if root is not None else info.default_root
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.augment = augment
        self.cache_rate = cache_rate
        self.dataset_options = dataset_options
        self.bad_cases = bad_cases
        self.train_cases = train_cases
        self.recorded_split = None if recorded_split is None else {k: list(v) for k, v in recorded_split.items()}
        self.datasets: dict[str, SegmentationDataset] = {}
        #: Broken cases left out with ``bad_cases="skip"``: ``{"split", "case", "file", "problem"}`` each.
        self.skipped_cases: list[dict[str, str]] = []

    @property
    def num_classes(self) -> int:
        """Number of label classes, background included (2 for binary tasks)."""
        return dataset_info(self.dataset).num_classes

    @property
    def in_channels(self) -> int:
        """Number of image channels."""
        return dataset_info(self.dataset).in_channels

    @property
    def split(self) -> dict[str, list[str]]:
        """Case ids of each split, ``{"train": [...], "val": [...], "test": [...]}``; available after ``setup``."""
        if len(self.datasets) < len(SPLIT_NAMES):
            raise RuntimeError("the split is known only after setup(); call dm.setup('fit') first")
        return {name: list(self.datasets[name].case_ids) for name in SPLIT_NAMES}

    def prepare_data(self) -> None:
        """Create the data if the dataset knows how to (the synthetic demo sets); real data is never downloaded."""
        prepare = dataset_info(self.dataset).prepare
        if prepare is not None and self.root is not None:
            prepare(Path(self.root))

    def setup(self, stage: str | None = None) -> None:
        """Build the train, val and test datasets (once; later calls reuse them).

        Args:
            stage: Lightning stage (``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None``); all splits
                are built whatever the stage, see the module docstring.
        """
        for name in SPLIT_NAMES:
            if name in self.datasets:
                continue
            cache_rate = self.cache_rate if name != "test" else 0.0
            recorded = self.recorded_split is not None
            budget = name == "train" and self.train_cases is not None and not recorded
            filtered = self.bad_cases == "skip" or budget or recorded
            dataset = build_dataset(
                self.dataset,
                self.root,
                split=name,
                image_size=self.image_size,
                seed=self.seed,
                val_fraction=self.val_fraction,
                test_fraction=self.test_fraction,
                augment=self.augment if name == "train" else False,
                # a cache reads every case now: when cases are left out, cache only the kept ones (below)
                cache_rate=0.0 if filtered else cache_rate,
                **self.dataset_options,
            )
            if filtered:
                if recorded:
                    records = self._recorded_records(name, dataset)
                elif self.bad_cases == "skip":
                    records = self._readable_records(name, dataset)
                else:
                    records = list(dataset.data)
                if budget:
                    records = self._label_budget(records)
                dataset = make_dataset(records, dataset.transform, cache_rate=cache_rate)
            self.datasets[name] = dataset

    def _label_budget(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records of the first ``train_cases`` training subjects of a ``seed``-drawn permutation, in split order.

        A subject is what the split deals: a slice record's ``"subject"`` (the patient of an ACDC or Synapse volume,
        so a budget of 3 is every slice of 3 patients), else the case itself (a 2D image).
        """
        subjects = sorted({record.get("subject", record["name"]) for record in records})
        unit = "patients" if any("subject" in record for record in records) else "cases"
        if self.train_cases > len(subjects):
            raise ValueError(f"train_cases is {self.train_cases}, but the training split has {len(subjects)} {unit}")
        order = torch.randperm(len(subjects), generator=torch.Generator().manual_seed(self.seed))
        kept = {subjects[index] for index in order[: self.train_cases].tolist()}
        return [record for record in records if record.get("subject", record["name"]) in kept]

    def _recorded_records(self, split: str, dataset: SegmentationDataset) -> list[dict[str, Any]]:
        """The records of ``dataset`` that the recorded split lists for ``split``; every listed one must be there."""
        listed = set(self.recorded_split.get(split, []))
        missing = sorted(listed - set(dataset.case_ids))
        if missing:
            raise SplitMismatchError(
                f"{len(missing)} recorded {split} case(s) are not in the {split} split rebuilt from {self.root} "
                f"(e.g. {missing[:3]}); the dataset or the split settings changed since the run"
            )
        return [record for record in dataset.data if record["name"] in listed]

    def _readable_records(self, split: str, dataset: SegmentationDataset) -> list[dict[str, Any]]:
        """Read every case once; return the records of the readable ones and record the others."""
        broken: set[int] = set()
        for index in tqdm(range(len(dataset)), desc=f"checking {split} cases", unit="case", leave=False):
            try:
                dataset[index]
            except CaseFileError as err:
                broken.add(index)
                problem = str(err).removeprefix(f"{err.path}: ")
                self.skipped_cases.append(
                    {"split": split, "case": dataset.case_ids[index], "file": err.path, "problem": problem}
                )
        return [record for index, record in enumerate(dataset.data) if index not in broken]

    def volumes(self, split: str) -> VolumeDataset:
        """The 3D volumes of one split of a volume dataset (ACDC, Synapse) at native resolution, for per-volume
        scoring: those with a slice in :attr:`split` (so a volume skipped as broken, or outside the label budget,
        is left out here too), in the split's order.

        Raises:
            ValueError: If the dataset has no volume reader.
        """
        builder = VOLUME_DATASETS.get(self.dataset)
        if builder is None:
            raise ValueError(
                f"dataset {self.dataset!r} has no volume (3D) reader; available: {sorted(VOLUME_DATASETS)}"
            )
        options = {"seed": self.seed, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction}
        options.update(self.dataset_options)
        accepted = inspect.signature(builder).parameters
        volumes = build_volume_dataset(
            self.dataset, self.root, split=split, **{k: v for k, v in options.items() if k in accepted}
        )
        kept = set(self.split[split])
        return VolumeDataset([case for case in volumes.cases if kept.intersection(case.slice_names)])

    def save_split(self, path: str | os.PathLike[str]) -> Path:
        """Write :attr:`split` to ``path`` as JSON, atomically (temporary file, then ``os.replace``).

        Returns:
            The destination path.
        """
        return save_split_json(self.split, path)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            raise RuntimeError(f"no {name} dataset yet; call dm.setup() first")
        return DataLoader(
            self.datasets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            # A fresh generator per loader: every fit sees the same order and augmentation draws.
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Held-out test batches in a fixed order."""
        return self._loader("test", shuffle=False)
