"""Training augmentation for 2D images and slices: one named policy per imaging modality, built with albumentations.

Who does what: MONAI reads, resizes, scales and caches (``medpeft.data.transforms``, ``medpeft.data.volumes``);
albumentations draws the random 2D augmentation on the resized ``S x S`` sample, image and mask in one call so
every geometric draw hits both (masks are warped with nearest-neighbour sampling, so class ids stay exact).

Policies (``data.augmentation`` in a config; ``null`` means the dataset's own, see :data:`DATASET_POLICIES`):

* ``dermoscopy`` (ISIC 2018, the demo): a dermoscope has no up, down, left or right, so flips on both axes and
  90-degree turns, plus a moderate affine (scale 0.85-1.15, rotation up to 30 degrees, 5 % shift) and colour
  jitter, since skin tone, lighting and camera white balance vary between clinics.
* ``ultrasound`` (BUSI): the probe is on top, so the skin line is at the top and acoustic shadows fall below a
  lesion: only left-right flips, plus small brightness / contrast changes (gain settings). Kept this light on
  purpose: it is the recipe a plain smp script uses (horizontal flips), and vertical flips and 90-degree turns
  were measured to cost Dice on BUSI (issue 9).
* ``slices`` (ACDC, Synapse): anatomy has a side (left and right kidney are different classes, the right
  ventricle lies on one side of the left), so no flips; a small affine (rotation up to 15 degrees, scale 0.9-1.1:
  slice orientation and field of view vary between scanners) and small brightness / contrast changes.
* ``none``: no augmentation.

A policy can also be written out in the config as a list of albumentations transforms, each a one-key mapping
from the class name to its keyword arguments, which is also how the named policies are defined::

    augmentation:
      - HorizontalFlip: {p: 0.5}
      - Affine: {scale: [0.9, 1.1], rotate: [-10, 10], p: 0.5}
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

__all__ = [
    "DATASET_POLICIES",
    "POLICIES",
    "AlbumentationsD",
    "AugmentationSpec",
    "build_augmentation",
    "resolve_augmentation",
]

#: A policy name or a list of ``{TransformName: {kwargs}}`` steps; ``True`` / ``False`` mean default / off.
AugmentationSpec = bool | str | Sequence[Mapping[str, Mapping[str, Any]]] | None

POLICIES: dict[str, list[dict[str, dict[str, Any]]]] = {
    "dermoscopy": [
        {"HorizontalFlip": {"p": 0.5}},
        {"VerticalFlip": {"p": 0.5}},
        {"RandomRotate90": {"p": 0.5}},
        {
            "Affine": {
                "scale": (0.85, 1.15),
                "rotate": (-30, 30),
                "translate_percent": (-0.05, 0.05),
                "border_mode": cv2.BORDER_REFLECT_101,
                "p": 0.5,
            }
        },
        {"ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.5}},
    ],
    "ultrasound": [
        {"HorizontalFlip": {"p": 0.5}},
        {"RandomBrightnessContrast": {"brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.5}},
    ],
    "slices": [
        {
            "Affine": {
                "scale": (0.9, 1.1),
                "rotate": (-15, 15),
                "border_mode": cv2.BORDER_CONSTANT,
                "fill": 0,
                "fill_mask": 0,
                "p": 0.5,
            }
        },
        {"RandomBrightnessContrast": {"brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.5}},
    ],
    "none": [],
}

#: The policy each dataset builder uses when the config leaves ``data.augmentation`` unset. The synthetic demo
#: sets are read by the ISIC 2018 builder, so they get ``dermoscopy`` through it.
DATASET_POLICIES: dict[str, str] = {
    "isic2018": "dermoscopy",
    "busi": "ultrasound",
    "acdc": "slices",
    "synapse": "slices",
}


def resolve_augmentation(spec: AugmentationSpec, default_policy: str) -> list[dict[str, dict[str, Any]]]:
    """The list of steps a spec stands for.

    Args:
        spec: ``True`` or ``None``: ``default_policy``; ``False``: none; a policy name; or a list of steps.
        default_policy: The dataset's own policy (see :data:`DATASET_POLICIES`).

    Raises:
        ValueError: An unknown policy name, or a step that is not a one-key mapping (the message shows it).
    """
    if spec is None or spec is True:
        spec = default_policy
    if spec is False:
        return []
    if isinstance(spec, str):
        if spec not in POLICIES:
            raise ValueError(f"unknown augmentation policy {spec!r}; available: {', '.join(POLICIES)}")
        return POLICIES[spec]
    steps = list(spec)
    for index, step in enumerate(steps):
        if not isinstance(step, Mapping) or len(step) != 1:
            raise ValueError(
                f"augmentation step {index} must be a one-key mapping like {{HorizontalFlip: {{p: 0.5}}}}, "
                f"got {step!r}"
            )
    return steps


def build_augmentation(steps: Sequence[Mapping[str, Mapping[str, Any]]]) -> A.Compose:
    """An albumentations ``Compose`` of the steps.

    Raises:
        ValueError: A name that is not an albumentations transform, or arguments it rejects; the step is named.
    """
    transforms = []
    for index, step in enumerate(steps):
        ((name, kwargs),) = step.items()
        cls = getattr(A, name, None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise ValueError(f"augmentation step {index}: {name!r} is not an albumentations transform")
        try:
            transforms.append(cls(**dict(kwargs or {})))
        except (TypeError, ValueError) as err:
            raise ValueError(f"augmentation step {index} ({name}): {err}") from err
    return A.Compose(transforms)


class AlbumentationsD(Randomizable, MapTransform):
    """Apply an albumentations pipeline to ``image`` and ``label`` of a sample together.

    Input and output: ``image`` float ``[C, S, S]`` in ``[0, 1]`` (clamped afterwards, colour jitter may
    overshoot) and ``label`` ``[1, S, S]`` class ids. The draws come from MONAI's random state (one seed per sample
    handed to albumentations), so ``Compose.set_random_state`` and MONAI's DataLoader worker seeding make runs
    reproducible, and no two workers repeat each other's draws.

    Args:
        steps: Resolved steps (:func:`resolve_augmentation`).
        image_key: Key of the image.
        label_key: Key of the label.
    """

    def __init__(
        self,
        steps: Sequence[Mapping[str, Mapping[str, Any]]],
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        MapTransform.__init__(self, keys=[image_key, label_key])
        self.compose = build_augmentation(steps)
        self.image_key = image_key
        self.label_key = label_key
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        self.compose.set_random_seed(self._seed)
        image = np.ascontiguousarray(np.asarray(d[self.image_key], dtype=np.float32).transpose(1, 2, 0))  # HWC
        label = np.asarray(d[self.label_key])
        out = self.compose(image=image, mask=np.ascontiguousarray(label[0]))
        augmented = np.clip(out["image"], 0.0, 1.0)
        if augmented.ndim == 2:  # single-channel images may come back as [H, W]
            augmented = augmented[..., None]
        d[self.image_key] = torch.from_numpy(np.ascontiguousarray(augmented.transpose(2, 0, 1)))
        d[self.label_key] = torch.from_numpy(np.ascontiguousarray(out["mask"])[None].astype(label.dtype))
        return d
