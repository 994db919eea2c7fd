"""ISIC 2018 Task 1 reader: binary skin-lesion segmentation on RGB dermoscopy images.

Challenge: Codella et al., "Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the
International Skin Imaging Collaboration (ISIC)", arXiv:1902.03368. Data: https://challenge.isic-archive.com/data/#2018

On-disk layout (the official archives, unzipped side by side)::

    <root>/ISIC2018_Task1-2_Training_Input/ISIC_<id>.jpg
    <root>/ISIC2018_Task1_Training_GroundTruth/ISIC_<id>_segmentation.png      # values 0 / 255
    <root>/ISIC2018_Task1-2_Validation_Input/ + ISIC2018_Task1_Validation_GroundTruth/   (optional)
    <root>/ISIC2018_Task1-2_Test_Input/       + ISIC2018_Task1_Test_GroundTruth/         (optional)

Decisions:

* ``root`` may be the folder holding these folders or its parent (one level up), so ``datasets/`` works as well
  as ``datasets/isic2018/`` when there is a single ISIC folder below it.
* The training folders are required. When an official Validation (or Test) input folder *and* its ground-truth
  folder exist, they are the ``val`` (or ``test``) split; otherwise that split is carved out of the training set
  by :func:`~medpeft.data.splits.split_cases` with the given fraction and seed.
* Only ``ISIC_<digits>.{jpg,jpeg,png}`` inputs and ``ISIC_<digits>_segmentation.png`` masks are read; everything
  else (``LICENSE.txt``, ``ATTRIBUTION.txt``, ``*_superpixels.png``, ``.DS_Store``) is ignored.
* Case ids are the file stems, e.g. ``"ISIC_0012660"``.
* Pairing is checked when the dataset is built (an image without a mask or a mask without an image raises
  ``ValueError`` naming the file); file contents are checked when a case is loaded (unreadable or truncated files
  and masks with values other than {0, 255} raise :class:`~medpeft.data.transforms.CaseFileError`, a
  ``ValueError`` naming the file).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

from medpeft.data.augmentation import DATASET_POLICIES, AugmentationSpec, resolve_augmentation
from medpeft.data.registry import DatasetNotFoundError, SegmentationDataset, make_dataset, register_dataset
from medpeft.data.splits import SPLIT_NAMES, split_cases
from medpeft.data.transforms import CaseFileError, build_transforms

__all__ = [
    "ISIC_URL",
    "OFFICIAL_SPLIT_FOLDERS",
    "TRAIN_GROUND_TRUTH",
    "TRAIN_INPUT",
    "build_isic2018",
    "isic_split_records",
    "list_isic_cases",
    "resolve_isic_root",
]

ISIC_URL = "https://challenge.isic-archive.com/data/#2018"
TRAIN_INPUT = "ISIC2018_Task1-2_Training_Input"
TRAIN_GROUND_TRUTH = "ISIC2018_Task1_Training_GroundTruth"
OFFICIAL_SPLIT_FOLDERS: dict[str, tuple[str, str]] = {
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}

_IMAGE_RE = re.compile(r"^(ISIC_\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_MASK_RE = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)


def _not_found(problem: str) -> DatasetNotFoundError:
    """One error message that says what is missing, what is expected, where to get it and how to point at it."""
    return DatasetNotFoundError(
        f"ISIC 2018 Task 1 data not found: {problem}.\n"
        f"Expected layout (data.root may also be the parent folder of <root>):\n"
        f"  <root>/{TRAIN_INPUT}/ISIC_<id>.jpg\n"
        f"  <root>/{TRAIN_GROUND_TRUTH}/ISIC_<id>_segmentation.png\n"
        f"Download the Task 1 training input and ground truth from {ISIC_URL}, unzip both into one folder, "
        f"and point data.root in the config at it (or pass --set data.root=PATH)."
    )


def resolve_isic_root(root: str | os.PathLike[str]) -> Path:
    """Find the folder that holds the ISIC training folders.

    Args:
        root: That folder, or its parent.

    Returns:
        The folder holding ``ISIC2018_Task1-2_Training_Input``.

    Raises:
        DatasetNotFoundError: If ``root`` does not exist, or neither it nor one of its sub-folders holds the
            training input folder.
        ValueError: If several sub-folders of ``root`` hold one (ambiguous).
    """
    root = Path(root)
    if not root.is_dir():
        raise _not_found(f"the folder '{root}' does not exist")
    if (root / TRAIN_INPUT).is_dir():
        return root
    candidates = sorted(child for child in root.iterdir() if (child / TRAIN_INPUT).is_dir())
    if len(candidates) > 1:
        raise ValueError(
            f"several ISIC 2018 folders under '{root}': {[str(c) for c in candidates]}; set data.root to one of them"
        )
    if not candidates:
        raise _not_found(f"'{root}' has no {TRAIN_INPUT} folder, and neither has any of its sub-folders")
    return candidates[0]


def list_isic_cases(input_dir: Path, ground_truth_dir: Path) -> list[dict[str, Any]]:
    """Pair the images of an input folder with the masks of a ground-truth folder.

    Args:
        input_dir: Folder of ``ISIC_<id>.jpg`` images.
        ground_truth_dir: Folder of ``ISIC_<id>_segmentation.png`` masks.

    Returns:
        Case records ``{"image": Path, "label": Path, "name": "ISIC_<id>"}`` sorted by id.

    Raises:
        DatasetNotFoundError: If either folder is missing, or the input folder holds no images.
        CaseFileError: If an image has no mask or a mask has no image (a ``ValueError`` naming the file).
    """
    for folder in (input_dir, ground_truth_dir):
        if not folder.is_dir():
            raise _not_found(f"the folder '{folder}' does not exist")
    images = {m.group(1): p for p in input_dir.iterdir() if (m := _IMAGE_RE.match(p.name)) and p.is_file()}
    masks = {m.group(1): p for p in ground_truth_dir.iterdir() if (m := _MASK_RE.match(p.name)) and p.is_file()}
    if not images:
        raise _not_found(f"'{input_dir}' holds no ISIC_<id>.jpg images")

    unpaired_images = sorted(images.keys() - masks.keys())
    if unpaired_images:
        case_id = unpaired_images[0]
        raise CaseFileError(
            images[case_id],
            f"image has no mask (expected {ground_truth_dir / f'{case_id}_segmentation.png'}); "
            f"{len(unpaired_images)} image(s) without mask in total",
        )
    unpaired_masks = sorted(masks.keys() - images.keys())
    if unpaired_masks:
        case_id = unpaired_masks[0]
        raise CaseFileError(
            masks[case_id],
            f"mask has no image (expected {input_dir / f'{case_id}.jpg'}); "
            f"{len(unpaired_masks)} mask(s) without image in total",
        )
    return [{"image": images[i], "label": masks[i], "name": i} for i in sorted(images)]


def _official_folders(base: Path, split: str) -> tuple[Path, Path] | None:
    """The official (input, ground-truth) folders of ``split`` if both exist, else ``None``."""
    if split not in OFFICIAL_SPLIT_FOLDERS:
        return None
    input_dir, ground_truth_dir = (base / name for name in OFFICIAL_SPLIT_FOLDERS[split])
    if input_dir.is_dir() and not ground_truth_dir.is_dir():
        warnings.warn(
            f"'{input_dir}' exists but '{ground_truth_dir}' does not; "
            f"the {split} split is taken from the training set instead",
            stacklevel=3,
        )
    return (input_dir, ground_truth_dir) if input_dir.is_dir() and ground_truth_dir.is_dir() else None


def isic_split_records(
    root: str | os.PathLike[str], split: str, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> list[dict[str, Any]]:
    """Case records of one split of an ISIC-2018-layout folder.

    Official Validation / Test folders are used when present; the fraction of a split that has official folders
    is ignored, so the whole training set goes to the remaining splits.

    Args:
        root: Dataset folder or its parent (see :func:`resolve_isic_root`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: Seed of the split of the training set.
        val_fraction: Fraction of the training set used for ``val`` when there is no official validation set.
        test_fraction: Fraction of the training set used for ``test`` when there is no official test set.

    Returns:
        Case records ``{"image": Path, "label": Path, "name": str}`` sorted by id.

    Raises:
        ValueError: If ``split`` is unknown (or see :func:`split_cases`, :func:`list_isic_cases`).
        DatasetNotFoundError: See :func:`resolve_isic_root`.
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    base = resolve_isic_root(root)
    official = {name: _official_folders(base, name) for name in OFFICIAL_SPLIT_FOLDERS}
    if official.get(split) is not None:
        return list_isic_cases(*official[split])

    train_cases = list_isic_cases(base / TRAIN_INPUT, base / TRAIN_GROUND_TRUTH)
    assignment = split_cases(
        [case["name"] for case in train_cases],
        val_fraction=0.0 if official["val"] else val_fraction,
        test_fraction=0.0 if official["test"] else test_fraction,
        seed=seed,
    )
    keep = set(assignment[split])
    return [case for case in train_cases if case["name"] in keep]


@register_dataset("isic2018", num_classes=2, in_channels=3, class_names=("background", "lesion"))
def build_isic2018(
    root: str | os.PathLike[str],
    split: str = "train",
    image_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    augment: AugmentationSpec = None,
    cache_rate: float = 0.0,
) -> SegmentationDataset:
    """Build one split of ISIC 2018 Task 1 (reads real data only; never downloads or generates).

    Args:
        root: Dataset folder or its parent (see :func:`resolve_isic_root`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Side ``S`` of the square images and labels.
        seed: Seed of the train/val/test split and of the augmentation draws.
        val_fraction: Validation fraction of the training set (unused with an official validation set).
        test_fraction: Test fraction of the training set (unused with an official test set).
        augment: Training augmentation: a policy name or a list of albumentations steps
            (:mod:`medpeft.data.augmentation`), ``True`` for the ``dermoscopy`` policy, ``False`` for none; ``None``
            means ``dermoscopy`` for the ``"train"`` split and none otherwise.
        cache_rate: Fraction of cases kept in memory after loading and resizing (MONAI ``CacheDataset``);
            ``0`` reads files on every access.

    Returns:
        Dataset whose items are ``{"image": float32 [3, S, S] in [0, 1], "label": int64 [1, S, S] in {0, 1},
        "name": "ISIC_<id>"}``.
    """
    records = isic_split_records(root, split, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    steps = resolve_augmentation(split == "train" if augment is None else augment, DATASET_POLICIES["isic2018"])
    return make_dataset(records, build_transforms(image_size, steps), cache_rate=cache_rate, seed=seed)
