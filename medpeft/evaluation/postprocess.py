"""Removing small connected components from predicted masks, and choosing the size on validation.

A network trained on data with empty masks (BUSI's normal scans) marks small blobs where there is nothing; a minimum
component size removes them. The size is counted in pixels of the network's ``S x S`` input grid, so one number
means the same area whatever grid a prediction is at: a prediction at ``H x W`` (native-size scoring, ``predict.py``)
or a volume of ``H x W`` slices counts each of its pixels as ``S^2 / (H W)`` network pixels. Components are found per
foreground class with face connectivity (4 neighbours in 2D, 6 in 3D; :func:`scipy.ndimage.label`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

from medpeft.experiment.config import Config

__all__ = [
    "MIN_COMPONENT_SIZES",
    "choose_min_component_size",
    "configured_min_component_size",
    "dice_all_per_case",
    "remove_small_components",
]

#: The sizes ``postprocess.min_component_size: auto`` chooses from (pixels of the network grid; 0.4 % of a
#: 128 x 128 image at most).
MIN_COMPONENT_SIZES: tuple[int, ...] = (0, 10, 20, 40, 80, 160, 320, 640)


def _component_sizes(pred: torch.Tensor, num_classes: int, network_size: int) -> torch.Tensor:
    """For every pixel of ``pred``, the size in network pixels of the foreground component it belongs to
    (``inf`` on background, so no size removes it)."""
    pixel = network_size**2 / (pred.shape[-2] * pred.shape[-1])  # network pixels per pixel of this grid
    labels = pred.cpu().numpy()
    sizes = np.full(labels.shape, np.inf)
    for c in range(1, num_classes):
        components, n = ndimage.label(labels == c)
        if n:
            counts = np.bincount(components.ravel()) * pixel
            inside = components > 0
            sizes[inside] = counts[components[inside]]
    return torch.from_numpy(sizes).to(pred.device)


def _without_small(pred: torch.Tensor, sizes: torch.Tensor, min_size: int) -> torch.Tensor:
    return pred if min_size <= 0 else torch.where(sizes < min_size, torch.zeros_like(pred), pred)


def remove_small_components(pred: torch.Tensor, num_classes: int, min_size: int, network_size: int) -> torch.Tensor:
    """``pred`` (class ids ``[H, W]`` or ``[D, H, W]``) with every foreground component smaller than ``min_size``
    network pixels set to background (0); ``pred`` itself when ``min_size`` is 0."""
    if min_size <= 0:
        return pred
    return _without_small(pred, _component_sizes(pred, num_classes, network_size), min_size)


def configured_min_component_size(cfg: Config) -> int:
    """The ``postprocess.min_component_size`` a trained network applies. A finished run's config holds the number
    training chose; ``"auto"`` there (a run made before the setting existed) means none was chosen: 0."""
    size = cfg.postprocess.min_component_size
    return 0 if size == "auto" else size


def dice_all_per_case(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> float:
    """Mean over foreground classes of the Dice with an absent class scoring 1 when predicted empty and 0 otherwise
    (the ``dice_all`` rule of :mod:`medpeft.metrics.summary`)."""
    scores = []
    for c in range(1, num_classes):
        p, g = pred == c, label == c
        total = int(p.sum()) + int(g.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((p & g).sum()) / total)
    return float(np.mean(scores))


def choose_min_component_size(
    cases: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    network_size: int,
    sizes: Sequence[int] = MIN_COMPONENT_SIZES,
) -> tuple[int, dict[int, float]]:
    """The size of ``sizes`` with the highest mean :func:`dice_all_per_case` over ``cases`` (``(pred, label)`` pairs
    of one split, e.g. validation), the smallest on ties; and the mean for every size."""
    totals = dict.fromkeys(sizes, 0.0)
    n = 0
    for pred, label in cases:
        n += 1
        component_sizes = _component_sizes(pred, num_classes, network_size)  # labelled once for every candidate
        for size in sizes:
            kept = _without_small(pred, component_sizes, size)
            totals[size] += dice_all_per_case(kept, label, num_classes)
    means = {size: total / max(1, n) for size, total in totals.items()}
    best = max(sorted(sizes), key=lambda size: (means[size], -size))
    return best, means
