"""Case loading and MONAI dictionary transforms for 2D segmentation.

A case record is ``{"image": path, "label": path, "name": case_id}``. :func:`build_transforms` turns it into

* ``"image"``: float32 tensor ``[C, S, S]`` with values in ``[0, 1]``,
* ``"label"``: int64 tensor ``[1, S, S]`` of class ids,
* ``"name"``: the case id, unchanged.

Decisions:

* Files are decoded with Pillow. JPEGs are decoded with ``Image.draft`` at the smallest DCT scale (1/1 .. 1/8)
  that is still at least ``S`` pixels on each side, which makes reading multi-megapixel dermoscopy images several
  times faster; the result is then resized anyway.
* Images are resized straight to ``S x S`` (no cropping or padding, so aspect ratio is not kept, as in common
  ISIC practice): bilinear with anti-aliasing for the image, ``nearest-exact`` for the label so class ids stay
  exact. Both sample at pixel centres, so the mask stays aligned with the image (torch's plain ``nearest`` floors
  the source index and shifts the mask by up to half an output pixel).
* Augmentation (training only) is a modality policy applied with albumentations to image and label together
  (:mod:`medpeft.data.augmentation`). Its draws follow ``Compose.set_random_state`` and MONAI's ``DataLoader``
  worker seeding, so runs are reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, MapTransform, Resized, ScaleIntensityRanged
from PIL import Image

from medpeft.data.augmentation import AlbumentationsD

__all__ = [
    "CaseFileError",
    "LoadImageMaskd",
    "build_transforms",
    "load_binary_mask",
    "load_rgb_image",
    "output_steps",
]


class CaseFileError(ValueError):
    """A file of one case cannot be used (unreadable, truncated, wrong values, wrong size).

    Attributes:
        path: The file at fault.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path = os.fspath(path)


def load_rgb_image(path: str | os.PathLike[str], min_size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file as RGB.

    Args:
        path: Image file (JPEG or PNG; grey or palette images are converted to RGB).
        min_size: If given, a JPEG may be decoded at a reduced DCT scale as long as both sides stay
            ``>= min_size`` pixels; other formats are always decoded at full size.

    Returns:
        ``(image, (height, width))``: uint8 array ``[3, h, w]`` and the full-resolution size of the file, which
        differs from ``(h, w)`` when a reduced scale was used.

    Raises:
        CaseFileError: If the file cannot be opened or decoded (corrupt or truncated data).
    """
    try:
        with Image.open(path) as img:
            full_size = (img.height, img.width)
            if min_size is not None:
                img.draft("RGB", (min_size, min_size))
            rgb = np.asarray(img.convert("RGB"))  # [h, w, 3]; convert() forces the full decode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CaseFileError(path, f"cannot read image ({err})") from err
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)), full_size  # [h, w, 3] -> [3, h, w]


def load_binary_mask(path: str | os.PathLike[str], allowed_values: Sequence[int] = (0, 255)) -> np.ndarray:
    """Decode a mask file and binarise it.

    The mask is reduced to one channel with Pillow's ``convert("L")`` (which also drops an alpha channel and
    expands 1-bit masks to 0/255); every value must then be one of ``allowed_values``. Anything else means the file
    is not a binary mask (a colour overlay, a JPEG-compressed mask, a probability map), and guessing a threshold
    would silently corrupt the labels.

    Args:
        path: Mask file.
        allowed_values: Grey values the mask may contain; 0 is background, all others are foreground.

    Returns:
        uint8 array ``[1, H, W]`` with values in ``{0, 1}``.

    Raises:
        CaseFileError: If the file cannot be read, or holds values outside ``allowed_values``.
    """
    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"))  # [H, W]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CaseFileError(path, f"cannot read mask ({err})") from err
    found = np.unique(grey)
    unexpected = np.setdiff1d(found, np.asarray(allowed_values))
    if unexpected.size:
        shown = ", ".join(str(v) for v in found[:10]) + (", ..." if found.size > 10 else "")
        raise CaseFileError(
            path, f"mask values must be in {set(allowed_values)}, found {found.size} distinct values: {{{shown}}}"
        )
    return (grey > 0).astype(np.uint8)[None]  # [H, W] -> [1, H, W]


class LoadImageMaskd(MapTransform):
    """Replace the ``image`` / ``label`` paths of a case record by decoded arrays.

    Output: ``image`` float32 ``[3, h, w]`` in ``[0, 255]``, ``label`` uint8 ``[1, H, W]`` in ``{0, 1}``. ``h, w``
    may be smaller than the mask's ``H, W`` when the JPEG was decoded at a reduced scale; the resize that follows
    brings both to the same size.

    Args:
        image_key: Key of the image path.
        label_key: Key of the mask path.
        min_size: Smallest side the decoded image may have (see :func:`load_rgb_image`); ``None`` for full size.
        allowed_mask_values: Grey values a mask may hold (see :func:`load_binary_mask`).

    Raises:
        CaseFileError: If a file is unreadable, a mask has unexpected values, or the mask size differs from the
            image size.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        min_size: int | None = None,
        allowed_mask_values: Sequence[int] = (0, 255),
    ) -> None:
        super().__init__(keys=[image_key, label_key])
        self.image_key = image_key
        self.label_key = label_key
        self.min_size = min_size
        self.allowed_mask_values = tuple(allowed_mask_values)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image, full_size = load_rgb_image(d[self.image_key], self.min_size)
        label = load_binary_mask(d[self.label_key], self.allowed_mask_values)
        if label.shape[1:] != full_size:
            raise CaseFileError(
                d[self.label_key],
                f"mask is {label.shape[2]}x{label.shape[1]} (WxH) but image {os.fspath(d[self.image_key])} "
                f"is {full_size[1]}x{full_size[0]}",
            )
        d[self.image_key] = image.astype(np.float32)
        d[self.label_key] = label
        return d


def build_transforms(image_size: int, augmentation: Sequence[Mapping[str, Mapping[str, Any]]] = ()) -> Compose:
    """Build the MONAI pipeline that turns a case record into tensors.

    Args:
        image_size: Side ``S`` of the square output.
        augmentation: Resolved augmentation steps (:func:`~medpeft.data.augmentation.resolve_augmentation`);
            empty for none (validation and test).

    Returns:
        A ``Compose`` mapping ``{"image": path, "label": path, "name": str}`` to ``image`` float32 ``[3, S, S]`` in
        ``[0, 1]`` and ``label`` int64 ``[1, S, S]``. Its deterministic part comes first, so a ``CacheDataset`` can
        cache everything up to the first random transform.
    """
    keys = ["image", "label"]
    steps: list[Any] = [
        LoadImageMaskd(min_size=image_size),
        Resized(
            keys=keys,
            spatial_size=(image_size, image_size),
            mode=("bilinear", "nearest-exact"),
            align_corners=(False, None),
            anti_aliasing=(True, False),
        ),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
    ]
    if augmentation:
        steps.append(AlbumentationsD(augmentation))
    steps += output_steps()
    return Compose(steps)


def output_steps() -> list[Any]:
    """Plain tensors (not MetaTensors) keep batches simple for the models and the default collate."""
    return [
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        EnsureTyped(keys="label", dtype=torch.int64, track_meta=False),
    ]
