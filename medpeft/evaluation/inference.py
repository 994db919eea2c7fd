"""Inference for evaluation: class-id predictions for batches of 2D images and, slice by slice, for volumes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.data import resize_in_plane

__all__ = ["predict_images", "predict_volume"]


@torch.no_grad()
def predict_images(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Argmax prediction of a batch.

    Args:
        net: Segmenter in eval mode, ``[B, C, S, S] -> logits [B, K, S, S]``.
        images: ``[B, C, S, S]`` on the network's device.

    Returns:
        Class ids ``[B, S, S]`` (int64, on the network's device).
    """
    return net(images).argmax(dim=1)


@torch.no_grad()
def predict_volume(
    net: nn.Module, volume: torch.Tensor, image_size: int, in_channels: int = 1, batch_size: int = 16
) -> torch.Tensor:
    """Predict a volume slice by slice at the training resolution, back at its native in-plane size.

    Each slice is resized to ``S x S`` exactly as training slices are (:func:`~medpeft.data.resize_in_plane`),
    segmented, and its logits are resized back to ``H x W`` (bilinear) before the argmax, so the prediction lies on
    the volume's own voxel grid and surface distances can use its spacing.

    Args:
        net: Segmenter in eval mode.
        volume: ``[D, H, W]`` in ``[0, 1]`` (any device).
        image_size: ``S``.
        in_channels: Channels the network takes; a grayscale slice is repeated to fill them.
        batch_size: Slices per forward pass.

    Returns:
        Class ids ``[D, H, W]`` (int64, on the CPU).
    """
    device = next(net.parameters()).device
    depth, height, width = volume.shape
    slices = resize_in_plane(volume.cpu(), image_size)  # [D, S, S]
    labels = []
    for start in range(0, depth, batch_size):
        batch = slices[start : start + batch_size, None].to(device).expand(-1, in_channels, -1, -1)
        logits = net(batch).float()
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        labels.append(logits.argmax(dim=1).cpu())
    return torch.cat(labels)
