"""ACDC reader: cardiac cine-MRI segmentation of the right ventricle, myocardium and left ventricle.

Challenge: O. Bernard, A. Lalande, C. Zotti, F. Cervenansky et al., "Deep Learning Techniques for Automatic MRI
Cardiac Multi-structures Segmentation and Diagnosis: Is the Problem Solved?", IEEE TMI 37(11):2514-2525, 2018,
doi:10.1109/TMI.2018.2837502 (citation required by the data's ``MANDATORY_CITATION.md``).
Data: https://www.creatis.insa-lyon.fr/Challenge/acdc/

On-disk layout (2017 release: ``training/`` and ``testing/`` at the top; 2023 re-release: under
``database/training`` and ``database/testing``)::

    <anywhere below root>/patient<NNN>/Info.cfg                       # "ED: 1", "ES: 12", "Group: DCM", ...
    <anywhere below root>/patient<NNN>/patient<NNN>_frame<YY>.nii.gz     # 3D image of frame YY (X, Y, Z)
    <anywhere below root>/patient<NNN>/patient<NNN>_frame<YY>_gt.nii.gz  # its labels
    <anywhere below root>/patient<NNN>/patient<NNN>_4d.nii.gz           # full cine sequence (ignored)

Classes: 0 background, 1 right-ventricle cavity (RV), 2 myocardium (MYO), 3 left-ventricle cavity (LV).

Decisions:

* Patient folders are found anywhere below ``root`` (so ``data.root`` may be the release folder, its ``database``
  folder or ``training``). The same patient id in two places is an error (ambiguous copy).
* Every frame with a ``_gt`` mask is one volume, named ``patient001_ED`` / ``patient001_ES`` (frame numbers from
  ``Info.cfg``; ED is not always frame 1) or ``patient001_frame05`` for a labelled frame that is neither. Frames
  without a mask are skipped, and so is a patient without any mask (the 2017 testing set). A labelled patient must
  have both ED and ES masks. Slices are named ``patient001_ED_z03``.
* Split at patient level (ED and ES of a patient always together), seeded, stratified by ``Group`` (the
  diagnosis: DCM, HCM, MINF, NOR, RV) by default when every group has enough patients (7 for a 0.15 fraction; the
  full set has 20 per group), otherwise unstratified with a warning. Patients below a folder named ``testing`` that have masks (2023
  re-release) are the official test split when ``official_test`` is set and training patients exist too;
  ``test_fraction`` is then unused.
* Intensities: cast to float (the stored dtype varies per patient: float32, int16, uint8), clipped to the
  volume's 0.5 / 99.5 percentiles and scaled to [0, 1].
* Spacing from ``header.get_zooms()`` (the affine carries none), reordered to ``(sz, sy, sx)`` with the array.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

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
    percentile_normalise,
    read_nifti,
    register_volume_dataset,
    split_volume_cases,
    volume_record,
)

__all__ = [
    "ACDC_CLASSES",
    "ACDC_URL",
    "acdc_split",
    "build_acdc",
    "build_acdc_volumes",
    "find_acdc_patients",
    "list_acdc_volumes",
    "parse_info_cfg",
]

ACDC_URL = "https://www.creatis.insa-lyon.fr/Challenge/acdc/"
ACDC_CLASSES: tuple[str, ...] = ("background", "RV", "MYO", "LV")
_MEANING = "(0 background, 1 RV, 2 MYO, 3 LV)"

_PATIENT_RE = re.compile(r"^patient\d{3}$")
_FRAME_RE = re.compile(r"^(patient\d{3})_frame(\d+)(_gt)?\.nii(?:\.gz)?$")


def _not_found(problem: str) -> DatasetNotFoundError:
    """One error message that says what is missing, what is expected, where to get it and how to point at it."""
    return DatasetNotFoundError(
        f"ACDC data not found: {problem}.\n"
        f"Expected layout (patient folders anywhere below data.root, e.g. <root>/training/ and <root>/testing/ of "
        f"the 2017 release or <root>/database/training/ of the 2023 re-release):\n"
        f"  patient<NNN>/Info.cfg                           # ED / ES frame numbers and Group\n"
        f"  patient<NNN>/patient<NNN>_frame<YY>.nii.gz      # ED and ES images\n"
        f"  patient<NNN>/patient<NNN>_frame<YY>_gt.nii.gz   # their labels\n"
        f"Download ACDC from {ACDC_URL}, unzip it, and point data.root in the config at it "
        f"(or pass --set data.root=PATH)."
    )


def parse_info_cfg(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read an ACDC ``Info.cfg`` (plain ``Key: value`` lines, no section header).

    Returns:
        ``{"ED": "1", "ES": "12", "Group": "DCM", ...}``.

    Raises:
        CaseFileError: If the file cannot be read or a non-empty line has no ``:``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise CaseFileError(path, f"cannot read Info.cfg ({err})") from err
    info: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise CaseFileError(path, f"line {number} is not 'Key: value': {line!r}")
        info[key.strip()] = value.strip()
    return info


def find_acdc_patients(root: str | os.PathLike[str]) -> list[Path]:
    """All ``patient<NNN>`` folders below ``root`` (``root`` itself included), sorted by patient id.

    Raises:
        DatasetNotFoundError: If ``root`` does not exist or holds no patient folder.
        ValueError: If a patient id occurs in two folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise _not_found(f"the folder '{root}' does not exist")
    found: dict[str, Path] = {}
    for folder, subfolders, _ in os.walk(root):
        here = Path(folder)
        if _PATIENT_RE.match(here.name):
            if here.name in found:
                raise ValueError(f"patient {here.name} found twice: '{found[here.name]}' and '{here}'")
            found[here.name] = here
            subfolders.clear()  # nothing of interest below a patient folder
        else:
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
    if not found:
        raise _not_found(f"no patient<NNN> folder below '{root}'")
    return [found[name] for name in sorted(found)]


def _frame_number(info: dict[str, str], key: str, info_path: Path) -> int:
    try:
        return int(float(info[key]))  # "1" in the release; tolerate "1.0"
    except (KeyError, ValueError):
        raise CaseFileError(info_path, f"needs an integer '{key}: <frame>' line, got {info.get(key)!r}") from None


def _load_acdc_volume(image_path: Path, label_path: Path, name: str) -> dict[str, Any]:
    """Read, check and normalise one ED/ES volume (module-level so slice datasets pickle into workers)."""
    image, spacing = read_nifti(image_path)
    label, _ = read_nifti(label_path)
    if label.shape != image.shape:
        raise CaseFileError(label_path, f"label shape {label.shape} differs from image {image_path} {image.shape}")
    label = check_labels(label, len(ACDC_CLASSES), label_path, _MEANING)
    return volume_record(percentile_normalise(image), label, spacing, name)


def _patient_volumes(folder: Path) -> list[VolumeCase]:
    """The labelled volumes of one patient folder; ``[]`` for an unlabelled patient."""
    patient = folder.name
    images: dict[int, Path] = {}
    labels: dict[int, Path] = {}
    for path in folder.iterdir():
        match = _FRAME_RE.match(path.name)
        if match and match.group(1) == patient and path.is_file():
            (labels if match.group(3) else images)[int(match.group(2))] = path
    if not labels:
        return []

    info_path = folder / "Info.cfg"
    if not info_path.is_file():
        raise CaseFileError(info_path, "missing; it gives the ED / ES frame numbers of the labelled frames")
    info = parse_info_cfg(info_path)
    phases = {_frame_number(info, "ED", info_path): "ED", _frame_number(info, "ES", info_path): "ES"}
    for frame, phase in phases.items():
        if frame not in labels:
            expected = folder / f"{patient}_frame{frame:02d}_gt.nii.gz"
            holder = images.get(frame, info_path)
            raise CaseFileError(holder, f"{phase} frame {frame} (Info.cfg) has no label; expected {expected}")
    volumes = []
    for frame in sorted(labels):
        if frame not in images:
            raise CaseFileError(
                labels[frame], f"label has no image; expected {folder / f'{patient}_frame{frame:02d}.nii.gz'}"
            )
        image_shape, label_shape = nifti_shape(images[frame]), nifti_shape(labels[frame])
        if image_shape != label_shape:
            raise CaseFileError(
                labels[frame], f"label shape (D, H, W) {label_shape} differs from image {images[frame]} {image_shape}"
            )
        name = f"{patient}_{phases.get(frame, f'frame{frame:02d}')}"
        volumes.append(
            VolumeCase(
                name=name,
                group=patient,
                slice_names=tuple(f"{name}_z{z:02d}" for z in range(image_shape[0])),
                load=functools.partial(_load_acdc_volume, images[frame], labels[frame], name),
                stratum=info.get("Group", ""),
                official_split="test" if folder.parent.name.lower() == "testing" else None,
            )
        )
    return volumes


def list_acdc_volumes(root: str | os.PathLike[str]) -> list[VolumeCase]:
    """Every labelled ED / ES volume below ``root``, sorted by name (headers are read, voxel data is not).

    Raises:
        DatasetNotFoundError: If ``root`` is missing or holds no labelled patient.
        CaseFileError: If a patient folder is inconsistent (a ``ValueError`` naming the file; see module docs).
    """
    volumes = [volume for folder in find_acdc_patients(root) for volume in _patient_volumes(folder)]
    if not volumes:
        raise _not_found(f"no patient folder below '{root}' has a patient<NNN>_frame<YY>_gt.nii.gz label")
    return sorted(volumes, key=lambda volume: volume.name)


def acdc_split(
    root: str | os.PathLike[str],
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    stratify: bool = True,
    official_test: bool = True,
) -> dict[str, list[VolumeCase]]:
    """Patient-level train / val / test split of the ACDC volumes below ``root``.

    Args:
        root: Folder with patient folders anywhere below it.
        seed: Seed of the split.
        val_fraction: Fraction of the volumes (so of the patients) for validation.
        test_fraction: Fraction for testing; unused when an official test set is used.
        stratify: Split each diagnosis ``Group`` separately.
        official_test: Use labelled patients below a ``testing`` folder as the test split.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of :class:`~medpeft.data.volumes.VolumeCase`.
    """
    return split_volume_cases(
        list_acdc_volumes(root),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        stratify=stratify,
        official_test=official_test,
    )


@register_dataset("acdc", num_classes=len(ACDC_CLASSES), in_channels=1, class_names=ACDC_CLASSES)
def build_acdc(
    root: str | os.PathLike[str],
    split: str = "train",
    image_size: int = 224,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    augment: AugmentationSpec = None,
    cache_rate: float = 0.0,
    stratify: bool = True,
    official_test: bool = True,
) -> SegmentationDataset:
    """Build the 2D slice dataset of one ACDC split (reads real data only; never downloads).

    Args:
        root: Folder with patient folders anywhere below it (module docstring).
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Side ``S`` of the square slices.
        seed: Seed of the split and of the augmentation draws.
        val_fraction: Validation fraction of the volumes (patient-level).
        test_fraction: Test fraction of the volumes (patient-level; unused with an official test set).
        augment: Training augmentation: a policy name or a list of albumentations steps
            (:mod:`medpeft.data.augmentation`), ``True`` for the ``slices`` policy, ``False`` for none; ``None``
            means ``slices`` for the ``"train"`` split and none otherwise.
        cache_rate: See :func:`~medpeft.data.volumes.make_slice_dataset`.
        stratify: Split each diagnosis group separately.
        official_test: Use labelled ``testing/`` patients as the test split when present.

    Returns:
        Dataset of ``{"image": float32 [1, S, S] in [0, 1], "label": int64 [1, S, S] in {0, 1, 2, 3},
        "name": "patient001_ED_z03"}``.
    """
    check_split(split)
    cases = acdc_split(root, seed, val_fraction, test_fraction, stratify, official_test)[split]
    steps = resolve_augmentation(split == "train" if augment is None else augment, DATASET_POLICIES["acdc"])
    return make_slice_dataset(cases, image_size, steps, cache_rate=cache_rate, seed=seed)


@register_volume_dataset("acdc")
def build_acdc_volumes(
    root: str | os.PathLike[str],
    split: str = "test",
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    stratify: bool = True,
    official_test: bool = True,
) -> VolumeDataset:
    """The ED / ES volumes of one ACDC split, for per-volume evaluation (same split as :func:`build_acdc`).

    Returns:
        Sequence of ``{"image": float32 [D, H, W] in [0, 1], "label": int64 [D, H, W], "spacing": (sz, sy, sx) in
        mm, "name": "patient001_ED"}`` at native resolution.
    """
    check_split(split)
    return VolumeDataset(acdc_split(root, seed, val_fraction, test_fraction, stratify, official_test)[split])
