"""Shared machinery of 3D datasets that are trained on 2D slices and evaluated per volume (ACDC, Synapse).

A 3D dataset reader lists its labelled volumes as :class:`VolumeCase` records (name, split group, slice names and
a picklable loader) by reading headers only. From that list this module builds

* the **slice datasets** used for training and validation (:func:`make_slice_dataset`): a
  :class:`~medpeft.data.registry.SegmentationDataset` whose items are ``{"image": float32 [1, S, S] in [0, 1],
  "label": int64 [1, S, S], "name": "<volume>_z03"}``, exactly like the 2D datasets, so the DataModule, the model
  and the training loop need nothing 3D-specific;
* the **volume datasets** used for evaluation (:class:`VolumeDataset`): a sequence of ``{"image": float32
  [D, H, W] in [0, 1], "label": int64 [D, H, W], "spacing": (sz, sy, sx), "spacing_unit": "mm" or "voxel",
  "name": str}`` at native in-plane resolution (see :func:`volume_record`). :func:`build_volume_dataset` asks any registered 3D dataset for one split of them
  (:data:`VOLUME_DATASETS`, filled by :func:`register_volume_dataset`).

Decisions:

* One split function (:func:`split_volume_cases`) serves both kinds of dataset, so the test slices a model is never
  trained on and the test volumes it is evaluated on are the same cases for a given seed. Volumes that share a
  ``group`` (the ED and ES frames of one ACDC patient) always land in the same split.
* Volumes are read lazily: building a dataset reads headers only (the DataModule builds all three splits on
  setup). The slice datasets keep every volume they have read in memory, resized in-plane to ``S x S`` (image
  float32, label uint8: ``D * S * S * 5`` bytes per volume, about 0.5 GB for all of ACDC or of Synapse's training
  slices at ``S = 224``), so each file is decoded once per process; with ``num_workers > 0`` every loader worker
  keeps its own copy. Volume datasets never cache: evaluation reads each volume once.
* Slices are resized straight to ``S x S`` (aspect ratio not kept, as for the 2D datasets): bilinear with
  anti-aliasing for images, nearest for labels (``nearest-exact``: pixel-centre sampling), via MONAI ``Resize``
  with the slices as channels.
* Training augmentation: the ``slices`` policy of :mod:`medpeft.data.augmentation` by default (no flips: anatomy
  has a side), applied with albumentations to image and label together. It follows ``Compose.set_random_state``
  and the worker seeding of MONAI's ``DataLoader``, so it is reproducible.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import (
    Compose,
    Resize,
    Transform,
)
from monai.utils import convert_to_tensor
from nibabel.filebasedimages import ImageFileError

from medpeft.data.augmentation import AlbumentationsD
from medpeft.data.registry import SegmentationDataset, make_dataset
from medpeft.data.splits import SPLIT_NAMES, split_cases
from medpeft.data.transforms import CaseFileError, output_steps

__all__ = [
    "VOLUME_DATASETS",
    "LoadVolumeSliced",
    "VolumeCase",
    "VolumeDataset",
    "VolumeSliceCache",
    "build_slice_transforms",
    "build_volume_dataset",
    "check_labels",
    "check_split",
    "make_slice_dataset",
    "nifti_shape",
    "percentile_normalise",
    "read_nifti",
    "register_volume_dataset",
    "resize_in_plane",
    "split_volume_cases",
    "volume_record",
    "window_normalise",
]

# Errors nibabel / gzip / zlib raise on unreadable, truncated or non-NIfTI files.
_NIFTI_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)


@dataclass(frozen=True)
class VolumeCase:
    """One labelled volume, listed from headers and not yet read.

    Args:
        name: Volume id, e.g. ``"patient001_ED"`` or ``"case0001"``.
        group: Split unit: volumes with the same group always land in the same split (the patient id for ACDC).
        slice_names: Name of every slice along the first axis, ``len == D``.
        load: Picklable zero-argument callable (a module-level function or a ``functools.partial`` of one) that
            reads the volume and returns :func:`volume_record`'s dict.
        stratum: Optional stratification key (ACDC: the diagnosis group); ``""`` when unused.
        official_split: ``"test"`` when the volume belongs to the dataset's official test set, else ``None``.
    """

    name: str
    group: str
    slice_names: tuple[str, ...]
    load: Callable[[], dict[str, Any]]
    stratum: str = ""
    official_split: str | None = None

    @property
    def depth(self) -> int:
        """Number of slices ``D``."""
        return len(self.slice_names)


def volume_record(image: np.ndarray, label: np.ndarray, spacing: Sequence[float] | None, name: str) -> dict[str, Any]:
    """Package a read volume the way every volume loader returns it.

    Args:
        image: Normalised image ``[D, H, W]`` in ``[0, 1]``.
        label: Class ids ``[D, H, W]``.
        spacing: Voxel size ``(sz, sy, sx)`` in mm, or ``None`` when the file stores none.
        name: Volume id.

    Returns:
        ``{"image": float32 tensor [D, H, W], "label": int64 tensor [D, H, W], "spacing": (sz, sy, sx),
        "spacing_unit": "mm" | "voxel", "name": name}``; an unknown spacing is reported as ``(1, 1, 1)`` with
        ``spacing_unit = "voxel"``, so surface distances come out in voxels and say so.
    """
    assert image.shape == label.shape and image.ndim == 3, (image.shape, label.shape)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
        "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
        "spacing": (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing),
        "spacing_unit": "voxel" if spacing is None else "mm",
        "name": name,
    }


# --------------------------------------------------------------------------------------------------- file reading


def nifti_shape(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """Shape ``(D, H, W)`` of a 3D NIfTI file from its header alone (no voxel data is decoded).

    Raises:
        CaseFileError: If the header cannot be read or the image is not 3D (trailing singleton axes allowed).
    """
    try:
        shape = nib.load(path).shape
    except _NIFTI_ERRORS as err:
        raise CaseFileError(path, f"cannot read NIfTI header ({err})") from err
    x, y, z = _spatial_shape(path, shape)
    return z, y, x  # (X, Y, Z) -> (D, H, W), the order read_nifti returns


def _spatial_shape(path: str | os.PathLike[str], shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) < 3 or any(size != 1 for size in shape[3:]):
        raise CaseFileError(path, f"expected a 3D volume (X, Y, Z), got shape {tuple(shape)}")
    return shape[0], shape[1], shape[2]


def read_nifti(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a 3D NIfTI volume as ``[D, H, W]`` with its voxel spacing.

    The voxel array (X, Y, Z) is transposed to (Z, Y, X) = ``[D, H, W]``, and the spacing is reordered the same
    way. Spacing comes from ``header.get_zooms()``, not from the affine: ACDC's affines carry no voxel size
    (``qform_code 0``, ``sform_code 2``, affine ``diag(-1, -1, 1)``). The stored dtype is kept (ACDC mixes int16,
    uint8 and float32); ``scl_slope`` / ``scl_inter`` are applied by nibabel when set (NaN means unset).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(array [D, H, W], (sz, sy, sx))``.

    Raises:
        CaseFileError: If the file is unreadable or truncated, or not 3D.
    """
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)  # decodes the whole (gzip) stream: truncation surfaces here
        zooms = img.header.get_zooms()
    except _NIFTI_ERRORS as err:
        raise CaseFileError(path, f"cannot read NIfTI volume ({err})") from err
    _spatial_shape(path, data.shape)
    data = data.reshape(data.shape[:3])  # drop trailing singleton axes (X, Y, Z, 1) -> (X, Y, Z)
    # (sx, sy, sz) -> (sz, sy, sx); rounded so float32 header values read as written (0.7, not 0.69999999).
    spacing = (round(float(zooms[2]), 6), round(float(zooms[1]), 6), round(float(zooms[0]), 6))
    return np.ascontiguousarray(data.transpose(2, 1, 0)), spacing  # (X, Y, Z) -> (Z, Y, X) = [D, H, W]


def percentile_normalise(volume: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Clip a volume to its own ``lower`` / ``upper`` percentiles and scale that range to ``[0, 1]``.

    Per-volume percentiles make MRI volumes with arbitrary scanner units and dtypes comparable, and the clipping
    keeps a few very bright voxels (flow artefacts) from squeezing the tissue contrast into a narrow band.

    Args:
        volume: Any real array.
        lower: Lower percentile, in ``[0, 100)``.
        upper: Upper percentile, in ``(lower, 100]``.

    Returns:
        float32 array of the same shape in ``[0, 1]``; all zeros for a constant volume.
    """
    volume = volume.astype(np.float32, copy=False)
    lo, hi = np.percentile(volume, [lower, upper])
    if not hi > lo:
        return np.zeros_like(volume)
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def window_normalise(volume: np.ndarray, low: float = -125.0, high: float = 275.0) -> np.ndarray:
    """Clip a CT volume to the intensity window ``[low, high]`` (HU) and scale it to ``[0, 1]``.

    The default abdominal window [-125, 275] HU is the one of the TransUNet Synapse preprocessing.

    Returns:
        float32 array of the same shape in ``[0, 1]``.
    """
    return ((np.clip(volume.astype(np.float32, copy=False), low, high) - low) / (high - low)).astype(np.float32)


def check_labels(label: np.ndarray, num_classes: int, path: str | os.PathLike[str], meaning: str = "") -> np.ndarray:
    """Check that a label array holds only class ids ``0 .. num_classes - 1`` and return it as uint8.

    Args:
        label: Label array of any numeric dtype (some datasets store labels as float).
        num_classes: Number of classes, background included.
        path: File the labels come from, named in the error.
        meaning: Optional text after the expected ids, e.g. ``"(0 background, 1 RV, 2 MYO, 3 LV)"``.

    Returns:
        uint8 array of the same shape.

    Raises:
        CaseFileError: If a value is not an integer in ``[0, num_classes)``.
    """
    found = np.unique(label)
    bad = found[(found != np.round(found)) | (found < 0) | (found >= num_classes)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in found[:12]) + (", ..." if found.size > 12 else "")
        raise CaseFileError(
            path,
            f"label values must be class ids in {{0, ..., {num_classes - 1}}}{' ' + meaning if meaning else ''}; "
            f"found {{{shown}}}",
        )
    return label.astype(np.uint8)


# ------------------------------------------------------------------------------------------------------- splitting


def split_volume_cases(
    cases: Sequence[VolumeCase],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    stratify: bool = False,
    official_test: bool = True,
) -> dict[str, list[VolumeCase]]:
    """Split volumes into train / val / test at group level (no group in two splits), deterministically.

    When ``official_test`` is set and some volumes are marked ``official_split == "test"`` while others are not,
    the marked ones are the test split and the rest is split into train / val only (``test_fraction`` is
    ignored). Otherwise every volume is dealt by :func:`~medpeft.data.splits.split_cases`, with ``groups`` = each
    volume's ``group``. With ``stratify``, each stratum is split on its own and the results are joined, so val and
    test get each stratum in proportion. Because every stratum gives at least one group to each split with a
    positive fraction, small strata would inflate val and test; stratification is therefore used only when every
    stratum has at least ``1 / fraction`` groups for each positive fraction (7 for 0.15), and otherwise the split
    is unstratified, with a warning.

    Args:
        cases: Listed volumes; names must be unique.
        seed: Seed of the permutation.
        val_fraction: Fraction of volumes for validation.
        test_fraction: Fraction of volumes for testing (unused with an official test set).
        stratify: Split each ``stratum`` separately.
        official_test: Use the volumes marked as official test set when there are any.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted by name.

    Raises:
        ValueError: See :func:`~medpeft.data.splits.split_cases` (duplicate names, bad fractions).
    """
    by_name = {case.name: case for case in cases}
    marked = [case for case in cases if case.official_split == "test"]
    use_official = official_test and 0 < len(marked) < len(cases)
    pool = [case for case in cases if not (use_official and case.official_split == "test")]

    strata: dict[str, list[VolumeCase]] = {}
    for case in pool:
        strata.setdefault(case.stratum if stratify else "", []).append(case)
    if use_official:
        test_fraction = 0.0  # the official test set replaces the drawn one
    fractions = [f for f in (val_fraction, test_fraction) if f > 0]
    if stratify and fractions:
        sizes = {key: len({case.group for case in members}) for key, members in strata.items()}
        smallest = min(sizes, key=sizes.__getitem__)
        needed = math.ceil(1.0 / min(fractions) - 1e-9)  # groups for a rounded share of at least one
        if sizes[smallest] < needed:
            warnings.warn(
                f"not stratifying the split: stratum {smallest!r} has {sizes[smallest]} groups, fewer than the "
                f"{needed} needed for fractions {fractions}",
                stacklevel=2,
            )
            strata = {"": list(pool)}
    names: dict[str, list[str]] = {split: [] for split in SPLIT_NAMES}
    for members in strata.values():
        part = split_cases(
            [case.name for case in members],
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            groups={case.name: case.group for case in members},
        )
        for split in SPLIT_NAMES:
            names[split] += part[split]
    if use_official:
        names["test"] = [case.name for case in marked]
    return {split: [by_name[name] for name in sorted(names[split])] for split in SPLIT_NAMES}


def check_split(split: str) -> None:
    """Raise ``ValueError`` naming the valid splits unless ``split`` is one of them."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")


# -------------------------------------------------------------------------------------------------- slice datasets


def resize_in_plane(volume: torch.Tensor, size: int, is_label: bool = False) -> torch.Tensor:
    """Resize every slice of ``volume`` [D, H, W] to ``[D, size, size]`` the way training slices are made.

    Images: bilinear with anti-aliasing, clamped to [0, 1] (bilinear overshoot), float32. Labels: ``nearest-exact``
    (pixel-centre sampling, the same grid as bilinear with ``align_corners=False``), uint8. The D slices act as
    channels, so MONAI ``Resize`` interpolates in-plane only. Evaluation feeds the network exactly these slices.
    """
    target = (size, size)
    if is_label:
        if tuple(volume.shape[1:]) != target:
            volume = Resize(target, mode="nearest-exact")(volume.float())
        return convert_to_tensor(volume, track_meta=False).round().to(torch.uint8)
    if tuple(volume.shape[1:]) != target:
        volume = Resize(target, mode="bilinear", align_corners=False, anti_aliasing=True)(volume)
    return convert_to_tensor(volume, dtype=torch.float32, track_meta=False).clamp(0.0, 1.0)


class VolumeSliceCache:
    """Reads volumes on first use and keeps them resized in-plane to ``S x S``.

    Args:
        cases: The volumes slices are drawn from.
        image_size: Side ``S`` of the cached slices.

    Raises:
        CaseFileError: From a volume's loader, or if a volume's depth differs from its header's.
    """

    def __init__(self, cases: Sequence[VolumeCase], image_size: int) -> None:
        self.cases = list(cases)
        self.image_size = image_size
        self._volumes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        case = self.cases[index]
        volume = case.load()
        image, label = volume["image"], volume["label"]  # [D, H, W] each
        if image.shape[0] != case.depth:
            raise CaseFileError(case.name, f"volume has {image.shape[0]} slices, its header said {case.depth}")
        return resize_in_plane(image, self.image_size), resize_in_plane(label, self.image_size, is_label=True)

    def slice(self, index: int, z: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice ``z`` of volume ``index``: image float32 ``[1, S, S]`` in ``[0, 1]``, label uint8 ``[1, S, S]``."""
        if index not in self._volumes:
            self._volumes[index] = self._read(index)
        image, label = self._volumes[index]
        # Copies, so no later in-place transform can write into the cache.
        return image[z : z + 1].clone(), label[z : z + 1].clone()


class LoadVolumeSliced(Transform):
    """Turn a slice record ``{"case": int, "z": int, "name": str, "subject": str}`` into ``{"image", "label", "name"}``.

    Output: ``image`` float32 ``[1, S, S]`` in ``[0, 1]``, ``label`` uint8 ``[1, S, S]`` (see
    :meth:`VolumeSliceCache.slice`).
    """

    def __init__(self, cache: VolumeSliceCache) -> None:
        self.cache = cache

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)  # never mutate the dataset's own record
        d.pop("subject", None)  # the patient, for the label budget; not part of a batch
        d["image"], d["label"] = self.cache.slice(d.pop("case"), d.pop("z"))
        return d


def build_slice_transforms(
    cache: VolumeSliceCache, augmentation: Sequence[Mapping[str, Mapping[str, Any]]] = ()
) -> Compose:
    """MONAI pipeline from a slice record to ``image`` float32 ``[1, S, S]`` and ``label`` int64 ``[1, S, S]``.

    Args:
        cache: Where slices are read from.
        augmentation: Resolved augmentation steps (:mod:`medpeft.data.augmentation`); empty for none.

    Returns:
        The ``Compose``; its deterministic part comes first, so a ``CacheDataset`` caches up to it.
    """
    steps: list[Any] = [LoadVolumeSliced(cache)]
    if augmentation:
        steps.append(AlbumentationsD(augmentation))
    steps += output_steps()
    return Compose(steps)


def make_slice_dataset(
    cases: Sequence[VolumeCase],
    image_size: int,
    augmentation: Sequence[Mapping[str, Mapping[str, Any]]],
    cache_rate: float = 0.0,
    seed: int | None = None,
) -> SegmentationDataset:
    """The 2D dataset of every slice of ``cases``.

    Args:
        cases: Volumes of one split.
        image_size: Side ``S`` of the square slices.
        augmentation: Resolved augmentation steps; empty for none.
        cache_rate: Passed to :func:`~medpeft.data.registry.make_dataset`; volumes are cached anyway (module
            docstring), so ``> 0`` only moves the reading of that fraction of slices into construction.
        seed: Seed of the augmentation draws.

    Returns:
        Dataset of ``{"image": float32 [1, S, S] in [0, 1], "label": int64 [1, S, S], "name": slice name}``, the
        slices in case order, then along ``D``.
    """
    cache = VolumeSliceCache(cases, image_size)
    records = [
        {"case": index, "z": z, "name": slice_name, "subject": case.group}
        for index, case in enumerate(cases)
        for z, slice_name in enumerate(case.slice_names)
    ]
    return make_dataset(records, build_slice_transforms(cache, augmentation), cache_rate=cache_rate, seed=seed)


# ------------------------------------------------------------------------------------------------- volume datasets


class VolumeDataset(Sequence[dict[str, Any]]):
    """The volumes of one split, read on access (never cached).

    Items: ``{"image": float32 [D, H, W] in [0, 1], "label": int64 [D, H, W], "spacing": (sz, sy, sx),
    "name": str}`` at native resolution.

    Args:
        cases: The volumes, in order.

    Attributes:
        case_ids: The volume names, in order.
    """

    def __init__(self, cases: Sequence[VolumeCase]) -> None:
        self.cases = list(cases)
        self.case_ids: list[str] = [case.name for case in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self.cases[index].load()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (case.load() for case in self.cases)


VOLUME_DATASETS: dict[str, Callable[..., VolumeDataset]] = {}


def register_volume_dataset(name: str) -> Callable[[Callable[..., VolumeDataset]], Callable[..., VolumeDataset]]:
    """Register the volume builder ``builder(root, split="test", **options) -> VolumeDataset`` (decorator).

    Raises:
        ValueError: If ``name`` is not lower-case or already registered.
    """
    if name != name.lower() or not name:
        raise ValueError(f"dataset names must be non-empty and lower-case, got {name!r}")

    def decorator(builder: Callable[..., VolumeDataset]) -> Callable[..., VolumeDataset]:
        if name in VOLUME_DATASETS:
            raise ValueError(
                f"volume dataset {name!r} is already registered (by {VOLUME_DATASETS[name].__qualname__})"
            )
        VOLUME_DATASETS[name] = builder
        return builder

    return decorator


def build_volume_dataset(
    name: str, root: str | os.PathLike[str] | Path, split: str = "test", **kwargs: Any
) -> VolumeDataset:
    """The volumes of one split of a registered 3D dataset, for per-volume evaluation.

    Args:
        name: Registered name (``"acdc"``, ``"synapse"``).
        root: Dataset folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        **kwargs: Builder options; pass the same ``seed``, ``val_fraction`` and ``test_fraction`` as for training
            to get the volumes of the slices held out there.

    Raises:
        ValueError: If ``name`` has no volume builder; the message lists those that have one.
    """
    if name not in VOLUME_DATASETS:
        raise ValueError(f"dataset {name!r} has no volume (3D) reader; available: {sorted(VOLUME_DATASETS)}")
    check_split(split)
    return VOLUME_DATASETS[name](root, split=split, **kwargs)
