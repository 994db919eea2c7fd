"""Synapse multi-organ CT reader (MICCAI 2015 Multi-Atlas Abdomen Labeling / BTCV), TransUNet protocol.

Data: Landman et al., MICCAI 2015 "Multi-Atlas Labeling Beyond the Cranial Vault" challenge,
https://www.synapse.org/#!Synapse:syn3193805 (30 labelled abdominal CT volumes, 13 organs). The 8-organ 2D protocol
with 18 training and 12 test volumes is the one of TransUNet (Chen et al., arXiv:2102.04306,
https://github.com/Beckschen/TransUNet), whose preprocessed copy is requested through that repository's README.

Accepted layouts (found at ``root`` or up to three folders below it)::

    <base>/train_npz/case<NNNN>_slice<ZZZ>.npz    # TransUNet: one 2D slice, keys "image" [H, W], "label" [H, W]
    <base>/test_vol_h5/case<NNNN>.npy.h5          # TransUNet: one volume, datasets "image", "label" [D, H, W]
    <anywhere>/lists_Synapse/{train.txt,test_vol.txt}   # optional TransUNet case lists

    <base>/img/img<NNNN>.nii.gz + <base>/label/label<NNNN>.nii.gz   # raw BTCV (e.g. RawData/Training/)

Classes (TransUNet ids): 0 background, 1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas,
7 spleen, 8 stomach. Raw BTCV labels are mapped: 1 spleen -> 7, 2 right kidney -> 4, 3 left kidney -> 3,
4 gallbladder -> 2, 6 liver -> 5, 7 stomach -> 8, 8 aorta -> 1, 11 pancreas -> 6; 5 esophagus, 9 inferior vena cava,
10 portal and splenic veins, 12 right and 13 left adrenal gland -> 0.

Decisions:

* TransUNet layout: the official split is train = the ``train_npz`` cases, test = the ``test_vol_h5`` cases; val is
  drawn from the training cases (case level, seeded); ``test_fraction`` is unused. The ``train_npz`` slices of a
  case are stacked into a volume (they must be numbered 0..N-1), so a case can also be evaluated in 3D. With the
  list files, exactly the listed cases / slices are used (a listed file that is missing is an error).
* Raw BTCV layout: volumes are windowed to [-125, 275] HU and scaled to [0, 1] (the TransUNet preprocessing).
  With ``official_test`` (default) the 12 TransUNet test cases (BTCV ``img0001`` = ``case0001``, ...) are the test
  split when present, so raw data gives the published protocol's test set; otherwise, and for the remaining cases,
  the split is case-level and seeded. Case ids are ``case<NNNN>`` in both layouts; slices ``case0005_slice012``.
* TransUNet files are already in [0, 1] (values outside raise); no further normalisation.
* Spacing: TransUNet's npz / h5 files carry none, so their volumes report ``spacing = (1, 1, 1)`` and
  ``spacing_unit = "voxel"`` unless the ``spacing`` option gives one: HD95 is then in voxels, which is also how TransUNet's own evaluation (medpy
  ``hd95`` without voxel spacing) computed the published numbers. Raw BTCV volumes report the header's spacing in
  mm (``spacing`` overrides it), so their HD95 is not comparable with TransUNet's tables.
"""

from __future__ import annotations

import functools
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medpeft.data.augmentation import DATASET_POLICIES, AugmentationSpec, resolve_augmentation
from medpeft.data.registry import DatasetNotFoundError, SegmentationDataset, register_dataset
from medpeft.data.transforms import CaseFileError
from medpeft.data.volumes import (
    VolumeCase,
    VolumeDataset,
    check_labels,
    check_split,
    make_slice_dataset,
    nifti_shape,
    read_nifti,
    register_volume_dataset,
    split_volume_cases,
    volume_record,
    window_normalise,
)

__all__ = [
    "BTCV_TO_SYNAPSE",
    "SYNAPSE_CLASSES",
    "SYNAPSE_URL",
    "TRANSUNET_TEST_CASES",
    "TRANSUNET_URL",
    "build_synapse",
    "build_synapse_volumes",
    "list_synapse_volumes",
    "synapse_split",
]

SYNAPSE_URL = "https://www.synapse.org/#!Synapse:syn3193805"
TRANSUNET_URL = "https://github.com/Beckschen/TransUNet"
SYNAPSE_CLASSES: tuple[str, ...] = (
    "background",
    "aorta",
    "gallbladder",
    "left kidney",
    "right kidney",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
)
_MEANING = (
    "(TransUNet ids: 1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas, 7 spleen, 8 stomach)"
)
# BTCV id -> TransUNet id; the 5 BTCV structures not in the 8-organ protocol become background.
BTCV_TO_SYNAPSE: dict[int, int] = {1: 7, 2: 4, 3: 3, 4: 2, 6: 5, 7: 8, 8: 1, 11: 6}
_BTCV_LOOKUP = np.array([BTCV_TO_SYNAPSE.get(btcv_id, 0) for btcv_id in range(14)], dtype=np.uint8)
# lists/lists_Synapse/test_vol.txt of the TransUNet repository.
TRANSUNET_TEST_CASES: tuple[str, ...] = (
    "case0001", "case0002", "case0003", "case0004", "case0008", "case0022",
    "case0025", "case0029", "case0032", "case0035", "case0036", "case0038",
)  # fmt: skip

_NPZ_RE = re.compile(r"^(case\d+)_slice(\d+)\.npz$")
_H5_RE = re.compile(r"^(case\d+)(?:\.npy)?\.h5$")
_BTCV_IMAGE_RE = re.compile(r"^img(\d+)\.nii(?:\.gz)?$")
_BTCV_LABEL_RE = re.compile(r"^label(\d+)\.nii(?:\.gz)?$")
_SEARCH_DEPTH = 3
_DATA_FOLDERS = frozenset({"train_npz", "test_vol_h5", "img", "label"})


def _not_found(problem: str) -> DatasetNotFoundError:
    """One error message that says what is missing, what is expected, where to get it and how to point at it."""
    return DatasetNotFoundError(
        f"Synapse multi-organ data not found: {problem}.\n"
        f"Expected layout (at data.root or up to {_SEARCH_DEPTH} folders below it), either TransUNet's preprocessing:\n"
        f"  <base>/train_npz/case<NNNN>_slice<ZZZ>.npz   <base>/test_vol_h5/case<NNNN>.npy.h5\n"
        f"or raw BTCV NIfTI:\n"
        f"  <base>/img/img<NNNN>.nii.gz   <base>/label/label<NNNN>.nii.gz\n"
        f"Download the raw data from {SYNAPSE_URL} (Multi-Atlas Abdomen Labeling, RawData.zip) or request TransUNet's "
        f"preprocessed copy as its README ({TRANSUNET_URL}) explains, and point data.root in the config at it "
        f"(or pass --set data.root=PATH)."
    )


def _folders_below(root: Path) -> list[Path]:
    """``root`` and its non-hidden sub-folders up to ``_SEARCH_DEPTH`` levels down, in sorted order.

    The data folders themselves are not entered: they hold thousands of files and no layout folder.
    """
    found, level = [root], [root]
    for _ in range(_SEARCH_DEPTH):
        parents = [f for f in level if f.name not in _DATA_FOLDERS]
        level = [c for f in parents for c in sorted(f.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        found += level
    return found


def _one(candidates: list[Path], what: str, root: Path) -> Path | None:
    if len(candidates) > 1:
        raise ValueError(f"several {what} below '{root}': {[str(c) for c in candidates]}; set data.root to one")
    return candidates[0] if candidates else None


def _read_list(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as err:
        raise CaseFileError(path, f"cannot read case list ({err})") from err


def _check_unit_range(image: np.ndarray, path: Path) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise CaseFileError(
            path,
            f"expected TransUNet-preprocessed intensities in [0, 1] (CT clipped to [-125, 275] HU, then scaled); "
            f"found [{low:g}, {high:g}]",
        )
    return np.clip(image, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------- volume loaders


def _read_npz_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as data:
            image, label = np.asarray(data["image"]), np.asarray(data["label"])
    except KeyError as err:
        raise CaseFileError(path, f"npz needs arrays 'image' and 'label' ({err})") from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CaseFileError(path, f"cannot read npz slice ({err})") from err
    if image.ndim != 2 or image.shape != label.shape:
        raise CaseFileError(path, f"expected 2D 'image' and 'label' of one shape, got {image.shape} and {label.shape}")
    return image, label


def _load_npz_case(paths: Sequence[Path], name: str, spacing: tuple[float, float, float] | None) -> dict[str, Any]:
    """Stack the TransUNet training slices of one case into a volume (module-level: pickles into workers)."""
    images, labels = [], []
    for path in paths:
        image, label = _read_npz_slice(path)
        if images and image.shape != images[0].shape:
            raise CaseFileError(path, f"slice shape {image.shape} differs from {paths[0]} {images[0].shape}")
        images.append(_check_unit_range(image, path))
        labels.append(check_labels(label, len(SYNAPSE_CLASSES), path, _MEANING))
    return volume_record(np.stack(images), np.stack(labels), spacing, name)  # D x [H, W] -> [D, H, W]


def _h5_shape(path: Path) -> tuple[int, ...]:
    try:
        with h5py.File(path, "r") as f:
            shapes = {key: f[key].shape for key in ("image", "label")}
    except KeyError as err:
        raise CaseFileError(path, f"h5 file needs datasets 'image' and 'label' ({err})") from err
    except OSError as err:
        raise CaseFileError(path, f"cannot read h5 volume ({err})") from err
    if len(shapes["image"]) != 3 or shapes["image"] != shapes["label"]:
        raise CaseFileError(path, f"expected 'image' and 'label' of one shape [D, H, W], got {shapes}")
    return shapes["image"]


def _load_h5_case(path: Path, name: str, spacing: tuple[float, float, float] | None) -> dict[str, Any]:
    """Read one TransUNet test volume ``[D, H, W]`` (module-level: pickles into workers)."""
    try:
        with h5py.File(path, "r") as f:
            image, label = f["image"][:], f["label"][:]
    except (KeyError, OSError) as err:
        raise CaseFileError(path, f"cannot read h5 volume ({err})") from err
    label = check_labels(label, len(SYNAPSE_CLASSES), path, _MEANING)
    return volume_record(_check_unit_range(image, path), label, spacing, name)


def _load_btcv_case(
    image_path: Path, label_path: Path, name: str, spacing: tuple[float, float, float] | None
) -> dict[str, Any]:
    """Read one raw BTCV volume: HU window to [0, 1], 13 BTCV labels to the 8 TransUNet ids."""
    image, header_spacing = read_nifti(image_path)
    label, _ = read_nifti(label_path)
    if label.shape != image.shape:
        raise CaseFileError(label_path, f"label shape {label.shape} differs from image {image_path} {image.shape}")
    btcv = check_labels(label, len(_BTCV_LOOKUP), label_path, "(BTCV ids 0-13)")
    return volume_record(window_normalise(image), _BTCV_LOOKUP[btcv], spacing or header_spacing, name)


# ------------------------------------------------------------------------------------------------------- listing


def _transunet_cases(base: Path, lists: Path | None, spacing: tuple[float, float, float] | None) -> list[VolumeCase]:
    train_dir, test_dir = base / "train_npz", base / "test_vol_h5"
    slices: dict[str, dict[int, Path]] = {}
    if train_dir.is_dir():
        for path in train_dir.iterdir():
            if match := _NPZ_RE.match(path.name):
                slices.setdefault(match.group(1), {})[int(match.group(2))] = path
    volumes = {m.group(1): p for p in test_dir.iterdir() if (m := _H5_RE.match(p.name))} if test_dir.is_dir() else {}

    if lists is not None and (lists / "train.txt").is_file():
        listed: dict[str, dict[int, Path]] = {}
        for entry in _read_list(lists / "train.txt"):
            match = _NPZ_RE.match(f"{entry}.npz")
            path = slices.get(match.group(1), {}).get(int(match.group(2))) if match else None
            if path is None:
                raise CaseFileError(train_dir / f"{entry}.npz", f"listed in {lists / 'train.txt'} but missing")
            listed.setdefault(match.group(1), {})[int(match.group(2))] = path
        slices = listed
    if lists is not None and (lists / "test_vol.txt").is_file():
        entries = _read_list(lists / "test_vol.txt")
        for entry in entries:
            if entry not in volumes:
                raise CaseFileError(test_dir / f"{entry}.npy.h5", f"listed in {lists / 'test_vol.txt'} but missing")
        volumes = {entry: volumes[entry] for entry in entries}

    overlap = sorted(slices.keys() & volumes.keys())
    if overlap:
        raise ValueError(f"cases {overlap} are in both '{train_dir}' and '{test_dir}': the test set would leak")
    cases = []
    for case, by_index in sorted(slices.items()):
        missing = sorted(set(range(max(by_index) + 1)) - by_index.keys())
        if missing:
            expected = train_dir / f"{case}_slice{missing[0]:03d}.npz"
            raise CaseFileError(expected, f"missing: the slices of {case} must be numbered 0..{max(by_index)}")
        paths = tuple(by_index[index] for index in sorted(by_index))
        names = tuple(f"{case}_slice{index:03d}" for index in sorted(by_index))
        cases.append(VolumeCase(case, case, names, functools.partial(_load_npz_case, paths, case, spacing)))
    for case, path in sorted(volumes.items()):
        depth = _h5_shape(path)[0]
        names = tuple(f"{case}_slice{z:03d}" for z in range(depth))
        load = functools.partial(_load_h5_case, path, case, spacing)
        cases.append(VolumeCase(case, case, names, load, official_split="test"))
    return cases


def _btcv_cases(base: Path, spacing: tuple[float, float, float] | None) -> list[VolumeCase]:
    image_dir, label_dir = base / "img", base / "label"
    images = {int(m.group(1)): p for p in image_dir.iterdir() if (m := _BTCV_IMAGE_RE.match(p.name))}
    labels = {int(m.group(1)): p for p in label_dir.iterdir() if (m := _BTCV_LABEL_RE.match(p.name))}
    for number in sorted(images.keys() ^ labels.keys()):
        if number in images:
            raise CaseFileError(
                images[number], f"image has no label; expected {label_dir / f'label{number:04d}.nii.gz'}"
            )
        raise CaseFileError(labels[number], f"label has no image; expected {image_dir / f'img{number:04d}.nii.gz'}")
    cases = []
    for number in sorted(images):
        shape, label_shape = nifti_shape(images[number]), nifti_shape(labels[number])
        if shape != label_shape:
            raise CaseFileError(
                labels[number], f"label shape (D, H, W) {label_shape} differs from image {images[number]} {shape}"
            )
        case = f"case{number:04d}"
        cases.append(
            VolumeCase(
                name=case,
                group=case,
                slice_names=tuple(f"{case}_slice{z:03d}" for z in range(shape[0])),
                load=functools.partial(_load_btcv_case, images[number], labels[number], case, spacing),
                official_split="test" if case in TRANSUNET_TEST_CASES else None,
            )
        )
    return cases


def list_synapse_volumes(root: str | os.PathLike[str], spacing: Sequence[float] | None = None) -> list[VolumeCase]:
    """Every labelled Synapse volume below ``root``, sorted by case id (headers only; layouts in module docs).

    The TransUNet layout wins when both it and raw BTCV folders are present.

    Args:
        root: Dataset folder, or a folder up to three levels above it.
        spacing: ``(sz, sy, sx)`` reported for every volume; ``None``: ``(1, 1, 1)`` for TransUNet files (no
            spacing stored), the NIfTI header's for raw BTCV.

    Raises:
        DatasetNotFoundError: If ``root`` is missing or holds neither layout, or no case.
        ValueError: If the layout is ambiguous, or a file is missing or inconsistent (naming it).
    """
    root = Path(root)
    if not root.is_dir():
        raise _not_found(f"the folder '{root}' does not exist")
    override = None if spacing is None else tuple(float(s) for s in spacing)
    if override is not None and len(override) != 3:
        raise ValueError(f"spacing must be (sz, sy, sx), got {spacing}")
    folders = _folders_below(root)
    base = _one(
        [f for f in folders if (f / "train_npz").is_dir() or (f / "test_vol_h5").is_dir()],
        "TransUNet Synapse folders (train_npz / test_vol_h5)",
        root,
    )
    if base is not None:
        lists = _one([f for f in folders if f.name == "lists_Synapse"], "lists_Synapse folders", root)
        cases = _transunet_cases(base, lists, override)
    else:
        base = _one(
            [f for f in folders if (f / "img").is_dir() and (f / "label").is_dir()], "BTCV img/ + label/ folders", root
        )
        if base is None:
            raise _not_found(f"no train_npz/, test_vol_h5/ or img/ + label/ folder at or below '{root}'")
        cases = _btcv_cases(base, override)
    if not cases:
        raise _not_found(f"'{base}' holds no case<NNNN>_slice<ZZZ>.npz, case<NNNN>.npy.h5 or img<NNNN>.nii.gz file")
    return cases


def synapse_split(
    root: str | os.PathLike[str],
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    official_test: bool = True,
    spacing: Sequence[float] | None = None,
) -> dict[str, list[VolumeCase]]:
    """Case-level train / val / test split of the Synapse volumes below ``root`` (see the module docstring).

    Args:
        root: Dataset folder or an ancestor (see :func:`list_synapse_volumes`).
        seed: Seed of the split.
        val_fraction: Fraction of the cases for validation.
        test_fraction: Fraction of the cases for testing; unused when an official test set is used.
        official_test: Use the official test cases (``test_vol_h5``, or TransUNet's 12 among raw BTCV) as test.
        spacing: See :func:`list_synapse_volumes`.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of :class:`~medpeft.data.volumes.VolumeCase`.
    """
    return split_volume_cases(
        list_synapse_volumes(root, spacing),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        official_test=official_test,
    )


@register_dataset("synapse", num_classes=len(SYNAPSE_CLASSES), in_channels=1, class_names=SYNAPSE_CLASSES)
def build_synapse(
    root: str | os.PathLike[str],
    split: str = "train",
    image_size: int = 224,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    augment: AugmentationSpec = None,
    cache_rate: float = 0.0,
    official_test: bool = True,
) -> SegmentationDataset:
    """Build the 2D slice dataset of one Synapse split (reads real data only; never downloads).

    Args:
        root: Dataset folder or an ancestor (module docstring).
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Side ``S`` of the square slices.
        seed: Seed of the split and of the augmentation draws.
        val_fraction: Validation fraction of the cases.
        test_fraction: Test fraction of the cases (unused with an official test set).
        augment: Training augmentation: a policy name or a list of albumentations steps
            (:mod:`medpeft.data.augmentation`), ``True`` for the ``slices`` policy, ``False`` for none; ``None``
            means ``slices`` for the ``"train"`` split and none otherwise.
        cache_rate: See :func:`~medpeft.data.volumes.make_slice_dataset`.
        official_test: Use the official test cases as the test split (module docstring).

    Returns:
        Dataset of ``{"image": float32 [1, S, S] in [0, 1], "label": int64 [1, S, S] in {0, ..., 8},
        "name": "case0005_slice012"}``.
    """
    check_split(split)
    cases = synapse_split(root, seed, val_fraction, test_fraction, official_test)[split]
    steps = resolve_augmentation(split == "train" if augment is None else augment, DATASET_POLICIES["synapse"])
    return make_slice_dataset(cases, image_size, steps, cache_rate=cache_rate, seed=seed)


@register_volume_dataset("synapse")
def build_synapse_volumes(
    root: str | os.PathLike[str],
    split: str = "test",
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    official_test: bool = True,
    spacing: Sequence[float] | None = None,
) -> VolumeDataset:
    """The volumes of one Synapse split, for per-volume evaluation (same split as :func:`build_synapse`).

    Args:
        spacing: ``(sz, sy, sx)`` to report; ``None``: ``(1, 1, 1)`` (voxels, as TransUNet) for TransUNet files,
            the header's for raw BTCV (see :func:`list_synapse_volumes`).

    Returns:
        Sequence of ``{"image": float32 [D, H, W] in [0, 1], "label": int64 [D, H, W] in {0, ..., 8},
        "spacing": (sz, sy, sx), "name": "case0001"}`` at native resolution.
    """
    check_split(split)
    return VolumeDataset(synapse_split(root, seed, val_fraction, test_fraction, official_test, spacing)[split])
