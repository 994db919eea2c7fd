"""Segment 2D images (PNG, JPEG) with a trained network: masks at each image's own size.

Each image is read and brought to the network's input exactly as the run's test images were (RGB or one grey
channel by ``model.in_channels``; bilinear resize with anti-aliasing to ``S x S``; ``[0, 255] -> [0, 1]``); the
logits are resized back to the image's own ``H x W`` (bilinear) before the argmax, so the mask lies on the input's
pixel grid. Masks are written as PNG: ``0 / 255`` for binary tasks, class ids otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Resize, ScaleIntensityRange
from PIL import Image
from torch import nn

from medpeft.data.busi import load_grey_image
from medpeft.data.montage import class_colours, overlay
from medpeft.data.transforms import load_rgb_image

__all__ = ["IMAGE_SUFFIXES", "load_network_input", "predict_image", "write_mask", "write_overlay"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


def load_network_input(
    path: str | os.PathLike[str], image_size: int, in_channels: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The network input for one image file: ``[C, S, S]`` float32 in ``[0, 1]``, and the file's ``(H, W)``.

    Raises:
        CaseFileError: The file cannot be read or decoded (named in the message).
    """
    if in_channels == 3:
        image, size = load_rgb_image(path, min_size=image_size)
    else:
        image = load_grey_image(path)
        size = tuple(image.shape[1:])
    resize = Resize((image_size, image_size), mode="bilinear", align_corners=False, anti_aliasing=True)
    scale = ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)
    tensor = scale(resize(image.astype(np.float32)))
    return torch.as_tensor(np.asarray(tensor), dtype=torch.float32), size


@torch.no_grad()
def predict_image(net: nn.Module, image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Class ids ``[H, W]`` (uint8) of one network input ``[C, S, S]``, at the original ``size``."""
    device = next(net.parameters()).device
    logits = net(image[None].to(device))  # [1, K, S, S]
    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def write_mask(mask: np.ndarray, num_classes: int, path: str | os.PathLike[str]) -> Path:
    """Write class ids as a PNG: ``0 / 255`` for 2 classes, the ids themselves otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = mask * 255 if num_classes == 2 else mask
    Image.fromarray(values.astype(np.uint8)).save(path)
    return path


def write_overlay(
    image_path: str | os.PathLike[str], mask: np.ndarray, num_classes: int, path: str | os.PathLike[str]
) -> Path:
    """Write the image with its predicted classes blended in (the evaluation overlays' colours); background pixels
    keep the image's own values."""
    with Image.open(image_path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0  # [H, W, 3]
    rgba = overlay(mask, class_colours(num_classes))
    alpha = rgba[..., 3:]
    blended = rgb * (1.0 - alpha) + rgba[..., :3] * alpha
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(blended * 255.0).astype(np.uint8)).save(path)
    return path
