"""BUSI reader: binary lesion segmentation on grayscale breast-ultrasound images, with near-duplicate-aware splits.

Dataset: W. Al-Dhabyani, M. Gomaa, H. Khaled, A. Fahmy, "Dataset of breast ultrasound images", Data in Brief 28
(2020) 104863, doi:10.1016/j.dib.2019.104863. 780 images (benign 437, malignant 210, normal 133) from Baheya
Hospital, Cairo. Download: https://scholar.cu.edu.eg/?q=afahmy/pages/dataset, or the Kaggle mirror
``aryashah2k/breast-ultrasound-images-dataset``.

On-disk layout (the official archive, unzipped)::

    <root>/Dataset_BUSI_with_GT/<class>/<class> (<n>).png          # <class>: benign, malignant, normal
    <root>/Dataset_BUSI_with_GT/<class>/<class> (<n>)_mask.png     # one per image
    <root>/Dataset_BUSI_with_GT/<class>/<class> (<n>)_mask_1.png   # sometimes; also _mask_2 ...

Decisions:

* ``root`` may be the folder holding ``Dataset_BUSI_with_GT`` or that folder itself.
* Case ids are the image stems, e.g. ``"benign (4)"`` (spaces and parentheses kept); numbering may have gaps.
* Images are read as one channel with Pillow's ``convert("L")`` (ITU-R 601 luma): almost all are grayscale stored as
  RGB, and the few with coloured marks or a tint get a faithful grey rendering instead of one arbitrary channel.
* Masks come as PNG modes ``1``, ``L``, ``RGB`` and ``RGBA``. Each is reduced with ``convert("L")`` (which drops the
  alpha channel: averaging the raw RGBA array would count the all-255 alpha as foreground) and must then hold only
  {0, 255}; all masks of an image are merged by union (logical OR), since extra ``_mask_N`` files mark further
  lesions of the same image. Every mask must have the image's size.
* BUSI holds many near-duplicates (one scan with and without calipers, neighbouring frames, a few byte-identical
  files filed under two classes). Images whose 32x32 grayscale thumbnails correlate above ``dedup_threshold``
  (Pearson), or whose files are byte-identical, are joined into groups (transitively, union-find), and the
  train / val / test split keeps every group on one side and is stratified by class
  (:func:`~medpeft.data.splits.split_cases` with ``groups`` and ``strata``). Without this, test scores are inflated.
* Every file is read once when a dataset is built (the thumbnails need it anyway), so pairing, unreadable or
  truncated files, mask values and sizes are all reported before training starts, as a ``ValueError`` naming the
  file, or skipped with a warning when ``skip_bad_cases`` is set. The scan is kept in memory (never on disk) for
  the other splits of the same, unchanged folder.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose, MapTransform
from PIL import Image

from medpeft.data.augmentation import DATASET_POLICIES, AugmentationSpec, resolve_augmentation
from medpeft.data.registry import DatasetNotFoundError, SegmentationDataset, make_dataset, register_dataset
from medpeft.data.splits import SPLIT_NAMES, split_cases
from medpeft.data.transforms import CaseFileError, LoadImageMaskd, build_transforms, load_binary_mask

__all__ = [
    "BUSI_CLASSES",
    "BUSI_FOLDER",
    "BUSI_KAGGLE",
    "BUSI_URL",
    "BusiCase",
    "LoadBusiCased",
    "build_busi",
    "build_busi_transforms",
    "busi_near_duplicate_groups",
    "busi_split",
    "list_busi_cases",
    "load_grey_image",
    "load_mask_union",
    "near_duplicate_labels",
    "resolve_busi_root",
]

logger = logging.getLogger(__name__)

BUSI_URL = "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset"
BUSI_KAGGLE = "aryashah2k/breast-ultrasound-images-dataset"
BUSI_FOLDER = "Dataset_BUSI_with_GT"
BUSI_CLASSES: tuple[str, ...] = ("benign", "malignant", "normal")

_THUMBNAIL = 32  # side of the thumbnails compared for near-duplicates
_MASK_RE = re.compile(r"^(.+)_mask(?:_(\d+))?\.png$", re.IGNORECASE)
_IMAGE_RE = re.compile(r"^(.+)\.png$", re.IGNORECASE)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class BusiCase:
    """One BUSI image and its masks.

    Attributes:
        name: Case id, the image stem, e.g. ``"benign (4)"``.
        label_class: ``"benign"``, ``"malignant"`` or ``"normal"`` (the folder it was filed under).
        image: Image file.
        masks: Mask files, ``_mask`` first, then ``_mask_1``, ``_mask_2``, ...
    """

    name: str
    label_class: str
    image: Path
    masks: tuple[Path, ...]

    def record(self) -> dict[str, Any]:
        """The case record the transforms take: ``{"image": str, "label": [str, ...], "name": str}``."""
        return {"image": str(self.image), "label": [str(m) for m in self.masks], "name": self.name}


def _not_found(problem: str) -> DatasetNotFoundError:
    """One error message that says what is missing, what is expected, where to get it and how to point at it."""
    return DatasetNotFoundError(
        f"BUSI data not found: {problem}.\n"
        f"Expected layout (data.root may be <root> or <root>/{BUSI_FOLDER} itself):\n"
        f"  <root>/{BUSI_FOLDER}/<class>/<class> (<n>).png        with <class> in {', '.join(BUSI_CLASSES)}\n"
        f"  <root>/{BUSI_FOLDER}/<class>/<class> (<n>)_mask.png   (+ _mask_1.png, _mask_2.png for some images)\n"
        f"Download Dataset_BUSI_with_GT from {BUSI_URL} (or the Kaggle mirror {BUSI_KAGGLE}), unzip it, "
        f"and point data.root in the config at it (or pass --set data.root=PATH)."
    )


def resolve_busi_root(root: str | os.PathLike[str]) -> Path:
    """Find the ``Dataset_BUSI_with_GT`` folder.

    Args:
        root: That folder, or the folder holding it.

    Returns:
        The folder holding the class sub-folders.

    Raises:
        DatasetNotFoundError: If ``root`` does not exist or holds neither ``Dataset_BUSI_with_GT`` nor a class
            folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise _not_found(f"the folder '{root}' does not exist")
    if (root / BUSI_FOLDER).is_dir():
        return root / BUSI_FOLDER
    if any((root / name).is_dir() for name in BUSI_CLASSES):
        return root
    raise _not_found(f"'{root}' holds neither a {BUSI_FOLDER} folder nor the class folders {list(BUSI_CLASSES)}")


def list_busi_cases(base: Path, include_normal: bool = True) -> list[BusiCase]:
    """Pair the images of the class folders with their masks.

    Only ``*.png`` files are read; anything else (``.DS_Store``, ``Thumbs.db``) is ignored.

    Args:
        base: The ``Dataset_BUSI_with_GT`` folder (see :func:`resolve_busi_root`).
        include_normal: Also list the ``normal`` images (whose masks are empty).

    Returns:
        The cases, sorted by class, then name.

    Raises:
        DatasetNotFoundError: If a class folder is missing or holds no images.
        CaseFileError: If an image has no mask, a mask has no image, or two class folders hold the same name.
    """
    cases: list[BusiCase] = []
    seen: dict[str, Path] = {}
    for label_class in BUSI_CLASSES if include_normal else BUSI_CLASSES[:2]:
        folder = base / label_class
        if not folder.is_dir():
            raise _not_found(f"the class folder '{folder}' does not exist")
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            if mask_match := _MASK_RE.match(path.name):
                masks.setdefault(mask_match.group(1), []).append((int(mask_match.group(2) or 0), path))
            elif image_match := _IMAGE_RE.match(path.name):
                images[image_match.group(1)] = path
        if not images:
            raise _not_found(f"'{folder}' holds no <class> (<n>).png images")
        unpaired_masks = sorted(masks.keys() - images.keys())
        if unpaired_masks:
            name = unpaired_masks[0]
            raise CaseFileError(
                masks[name][0][1],
                f"mask has no image (expected {folder / f'{name}.png'}); "
                f"{len(unpaired_masks)} image name(s) in {folder} with masks but no image",
            )
        unpaired_images = sorted(images.keys() - masks.keys())
        if unpaired_images:
            name = unpaired_images[0]
            raise CaseFileError(
                images[name],
                f"image has no mask (expected {folder / f'{name}_mask.png'}); "
                f"{len(unpaired_images)} image(s) without mask in {folder}",
            )
        for name in sorted(images):
            if name in seen:
                raise CaseFileError(images[name], f"the same case name is also used by {seen[name]}")
            seen[name] = images[name]
            ordered = tuple(path for _, path in sorted(masks[name]))
            cases.append(BusiCase(name, label_class, images[name], ordered))
    return cases


def load_grey_image(path: str | os.PathLike[str], data: bytes | None = None) -> np.ndarray:
    """Decode an image as one channel (Pillow ``convert("L")``, ITU-R 601 luma for colour files).

    Args:
        path: Image file; named in errors.
        data: The file's bytes, if already read (then ``path`` is not opened).

    Returns:
        uint8 array ``[1, H, W]``.

    Raises:
        CaseFileError: If the file cannot be opened or decoded (corrupt or truncated data).
    """
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            grey = np.asarray(img.convert("L"))  # [H, W]; convert() forces the full decode
    except _DECODE_ERRORS as err:
        raise CaseFileError(path, f"cannot read image ({err})") from err
    return grey[None]


def load_mask_union(paths: Sequence[str | os.PathLike[str]], size: tuple[int, int]) -> np.ndarray:
    """Decode the masks of one image and merge them by union.

    Args:
        paths: Mask files (modes ``1``, ``L``, ``RGB`` or ``RGBA``); each must hold only {0, 255} once converted to
            ``L`` (mode ``1`` becomes {0, 255}).
        size: ``(H, W)`` of the image; every mask must match it.

    Returns:
        uint8 array ``[1, H, W]`` with values in ``{0, 1}``.

    Raises:
        CaseFileError: If a mask is unreadable, holds other values, or differs in size from the image.
    """
    union = np.zeros((1, *size), np.uint8)
    for path in paths:
        mask = load_binary_mask(path)  # [1, h, w] in {0, 1}
        if mask.shape[1:] != size:
            raise CaseFileError(
                path, f"mask is {mask.shape[2]}x{mask.shape[1]} (WxH) but its image is {size[1]}x{size[0]}"
            )
        union |= mask
    return union


class LoadBusiCased(MapTransform):
    """Replace the paths of a BUSI case record by decoded arrays.

    Input ``{"image": path, "label": [mask paths], ...}``; output ``image`` float32 ``[1, H, W]`` in ``[0, 255]``
    and ``label`` uint8 ``[1, H, W]`` in ``{0, 1}``, the union of all masks.

    Raises:
        CaseFileError: See :func:`load_grey_image` and :func:`load_mask_union`.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label") -> None:
        super().__init__(keys=[image_key, label_key])
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = load_grey_image(d[self.image_key])
        d[self.label_key] = load_mask_union(d[self.label_key], image.shape[1:])
        d[self.image_key] = image.astype(np.float32)
        return d


def build_busi_transforms(image_size: int, augmentation: Sequence[Mapping[str, Mapping[str, Any]]] = ()) -> Compose:
    """The pipeline of :func:`~medpeft.data.transforms.build_transforms` with the BUSI loader as its first step.

    Returns:
        A ``Compose`` mapping a BUSI record to ``image`` float32 ``[1, S, S]`` in ``[0, 1]`` and ``label`` int64
        ``[1, S, S]`` in ``{0, 1}``.
    """
    generic = build_transforms(image_size, augmentation)
    # Only the loading differs (one grey channel, several masks); resizing, scaling and augmentation are shared.
    assert isinstance(generic.transforms[0], LoadImageMaskd)
    return Compose([LoadBusiCased(), *generic.transforms[1:]])


def near_duplicate_labels(thumbnails: np.ndarray, digests: Sequence[str], threshold: float) -> np.ndarray:
    """Group images whose thumbnails correlate above ``threshold`` or whose files are identical.

    Args:
        thumbnails: ``[N, P]`` flattened grayscale thumbnails.
        digests: ``N`` file hashes; equal hashes are always grouped, even when the correlation is undefined
            (constant images).
        threshold: Pearson correlation above which two images are near-duplicates.

    Returns:
        int64 ``[N]``: the group of each image, numbered by first appearance (images alone get their own number).
    """
    n_images = len(digests)
    centred = thumbnails.astype(np.float64) - thumbnails.mean(axis=1, keepdims=True)  # [N, P]
    norms = np.linalg.norm(centred, axis=1, keepdims=True)  # [N, 1]
    # A constant thumbnail has no defined correlation; a zero row makes it correlate with nothing.
    unit = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)
    correlation = unit @ unit.T  # [N, P] x [P, N] -> [N, N], Pearson r of every pair
    first, second = np.nonzero(np.triu(correlation > threshold, k=1))
    pairs = list(zip(first.tolist(), second.tolist(), strict=True))
    by_digest: dict[str, int] = {}
    for index, digest in enumerate(digests):
        pairs.append((by_digest.setdefault(digest, index), index))

    parent = list(range(n_images))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for i, j in pairs:
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    roots = [find(i) for i in range(n_images)]
    numbering: dict[int, int] = {}
    return np.asarray([numbering.setdefault(r, len(numbering)) for r in roots], dtype=np.int64)


def _file_signature(cases: Sequence[BusiCase]) -> tuple[tuple[Any, ...], ...]:
    """Names, sizes and modification times of every file: the scan is reused only while none of them changes."""
    signature = []
    for case in cases:
        for path in (case.image, *case.masks):
            stat = path.stat()
            signature.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


@functools.lru_cache(maxsize=4)
def _scan(cases: tuple[BusiCase, ...], signature: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    """Read every case once: thumbnail, file hash and the first problem found (``None`` if the case is usable).

    ``signature`` is unused in the body; it is part of the cache key, so a changed file forces a new scan.

    Returns:
        ``(thumbnails [N, 32*32] float32, digests, problems)``.
    """
    del signature
    thumbnails = np.zeros((len(cases), _THUMBNAIL * _THUMBNAIL), np.float32)
    digests: list[str] = []
    problems: list[CaseFileError | None] = []
    for index, case in enumerate(cases):
        digest, problem = "", None
        try:
            try:
                data = case.image.read_bytes()
            except OSError as err:
                raise CaseFileError(case.image, f"cannot read image ({err})") from err
            # Hash the file bytes: byte-identical files filed under two classes must share a group.
            digest = hashlib.sha256(data).hexdigest()
            grey = load_grey_image(case.image, data)
            load_mask_union(case.masks, grey.shape[1:])
            # Pillow's bilinear downscaling averages over a triangle two output pixels wide, so calipers, text and
            # speckle barely move the thumbnail.
            thumb = Image.fromarray(grey[0]).resize((_THUMBNAIL, _THUMBNAIL), Image.Resampling.BILINEAR)
            thumbnails[index] = np.asarray(thumb, np.float32).ravel()
        except CaseFileError as err:
            problem = err
        digests.append(digest)
        problems.append(problem)
    return thumbnails, tuple(digests), tuple(problems)


def _usable_cases(
    root: str | os.PathLike[str], include_normal: bool, dedup_threshold: float, skip_bad_cases: bool
) -> tuple[list[BusiCase], np.ndarray]:
    """List, check and group the cases: ``(usable cases, group label of each)``."""
    if not 0.0 < dedup_threshold <= 1.0:
        raise ValueError(f"dedup_threshold must be in (0, 1], got {dedup_threshold}")
    cases = tuple(list_busi_cases(resolve_busi_root(root), include_normal))
    thumbnails, digests, problems = _scan(cases, _file_signature(cases))
    bad = [problem for problem in problems if problem is not None]
    if bad and not skip_bad_cases:
        raise bad[0].with_traceback(None)  # the error object is cached: drop the traceback of an earlier raise
    if bad:
        shown = "; ".join(str(problem) for problem in bad[:3])
        warnings.warn(f"skipping {len(bad)} unusable BUSI case(s) (skip_bad_cases=True): {shown}", stacklevel=3)
    keep = [index for index, problem in enumerate(problems) if problem is None]
    labels = near_duplicate_labels(thumbnails[keep], [digests[i] for i in keep], dedup_threshold)
    return [cases[i] for i in keep], labels


def busi_near_duplicate_groups(
    root: str | os.PathLike[str],
    include_normal: bool = True,
    dedup_threshold: float = 0.93,
    skip_bad_cases: bool = False,
) -> list[list[str]]:
    """The near-duplicate groups that the split keeps together.

    Args:
        root: ``Dataset_BUSI_with_GT`` or the folder holding it.
        include_normal: Consider the ``normal`` images too.
        dedup_threshold: Pearson correlation of 32x32 thumbnails above which two images are near-duplicates.
        skip_bad_cases: Leave out unusable cases (with a warning) instead of raising.

    Returns:
        Groups of two or more case ids, each sorted, sorted by first id.
    """
    cases, labels = _usable_cases(root, include_normal, dedup_threshold, skip_bad_cases)
    members: dict[int, list[str]] = {}
    for case, label in zip(cases, labels.tolist(), strict=True):
        members.setdefault(label, []).append(case.name)
    return sorted(sorted(names) for names in members.values() if len(names) > 1)


def busi_split(
    root: str | os.PathLike[str],
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    include_normal: bool = True,
    dedup_threshold: float = 0.93,
    skip_bad_cases: bool = False,
) -> dict[str, list[BusiCase]]:
    """Split BUSI into train / val / test, stratified by class, near-duplicate groups kept on one side.

    Args:
        root: ``Dataset_BUSI_with_GT`` or the folder holding it.
        seed: Seed of the split.
        val_fraction: Fraction of the cases used for validation.
        test_fraction: Fraction of the cases held out for testing.
        include_normal: Include the ``normal`` images (empty masks).
        dedup_threshold: See :func:`busi_near_duplicate_groups`.
        skip_bad_cases: See :func:`busi_near_duplicate_groups`.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted by case id.

    Raises:
        DatasetNotFoundError: See :func:`resolve_busi_root` and :func:`list_busi_cases`.
        CaseFileError: The first unusable case, unless ``skip_bad_cases``.
        ValueError: Bad fractions or threshold.
    """
    cases, labels = _usable_cases(root, include_normal, dedup_threshold, skip_bad_cases)
    sizes = Counter(labels.tolist())
    grouped = sum(size for size in sizes.values() if size > 1)
    logger.info(
        "BUSI: %d near-duplicate groups (%d images) among %d images (thumbnail correlation > %s or identical files)",
        sum(size > 1 for size in sizes.values()),
        grouped,
        len(cases),
        dedup_threshold,
    )
    assignment = split_cases(
        [case.name for case in cases],
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        groups={case.name: str(label) for case, label in zip(cases, labels.tolist(), strict=True)},
        strata={case.name: case.label_class for case in cases},
    )
    by_name = {case.name: case for case in cases}
    return {name: [by_name[case_id] for case_id in assignment[name]] for name in SPLIT_NAMES}


@register_dataset("busi", num_classes=2, in_channels=1, class_names=("background", "lesion"))
def build_busi(
    root: str | os.PathLike[str],
    split: str = "train",
    image_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    augment: AugmentationSpec = None,
    cache_rate: float = 0.0,
    include_normal: bool = True,
    dedup_threshold: float = 0.93,
    skip_bad_cases: bool = False,
) -> SegmentationDataset:
    """Build one split of BUSI (reads real data only; never downloads).

    Args:
        root: ``Dataset_BUSI_with_GT`` or the folder holding it.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Side ``S`` of the square images and labels (aspect ratio not kept).
        seed: Seed of the split and of the augmentation draws.
        val_fraction: Fraction of the cases used for validation.
        test_fraction: Fraction of the cases held out for testing.
        augment: Training augmentation: a policy name or a list of albumentations steps
            (:mod:`medpeft.data.augmentation`), ``True`` for the ``ultrasound`` policy, ``False`` for none; ``None``
            means ``ultrasound`` for the ``"train"`` split and none otherwise.
        cache_rate: Fraction of cases kept in memory after loading and resizing (MONAI ``CacheDataset``).
        include_normal: Include the ``normal`` images, whose masks are empty.
        dedup_threshold: Thumbnail correlation above which images are grouped (see
            :func:`busi_near_duplicate_groups`).
        skip_bad_cases: Leave out unusable cases with a warning instead of raising.

    Returns:
        Dataset whose items are ``{"image": float32 [1, S, S] in [0, 1], "label": int64 [1, S, S] in {0, 1},
        "name": "benign (4)"}``.

    Raises:
        ValueError: If ``split`` is unknown (or see :func:`busi_split`).
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    cases = busi_split(root, seed, val_fraction, test_fraction, include_normal, dedup_threshold, skip_bad_cases)[split]
    steps = resolve_augmentation(split == "train" if augment is None else augment, DATASET_POLICIES["busi"])
    records = [case.record() for case in cases]
    return make_dataset(records, build_busi_transforms(image_size, steps), cache_rate=cache_rate, seed=seed)
