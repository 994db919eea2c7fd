"""Per-case, per-class segmentation scores: Dice, IoU, HD95 and ASD, under a named scoring protocol.

Surface distances come from MONAI (``monai.metrics.utils.get_edge_surface_distance``: mask edges by binary
erosion with a face-connected structure, Euclidean distance transform, voxel ``spacing`` honoured). What differs
between tools is how the two directed distance sets (prediction -> ground truth, ground truth -> prediction) are
combined and what an empty mask scores. Two protocols are offered; every output says which one produced it.

``"symmetric"`` (the default)
    * HD95 = max(95th percentile of each directed set) -- MONAI's ``compute_hausdorff_distance(percentile=95)``.
    * ASD = mean of both directed sets pooled -- MONAI's ``compute_average_surface_distance(symmetric=True)``.
    * Distances in mm when the case has a spacing, else in pixels.
    * Empty masks (per case and class): ground truth and prediction both empty -> every score undefined (NaN:
      nothing to segment and nothing predicted); exactly one empty -> Dice = IoU = 0 (a miss or a false positive
      is an error) and HD95 = ASD undefined (no surface to measure from). Undefined scores are left out of every
      mean and counted (``n_excluded``), never turned into 0 or inf.

``"transunet"`` -- the scoring of TransUNet, Swin-Unet and SAMed on Synapse and ACDC (``calculate_metric_percase``
in their ``utils.py``, built on medpy), so numbers can sit next to theirs:
    * HD95 = 95th percentile of both directed sets pooled (medpy ``hd95``), in voxels (no spacing).
    * ASD = mean of both directed sets pooled (medpy >= 0.5 ``assd``), in voxels; IoU = Jaccard. (Those papers
      report Dice and HD95 only.)
    * Empty masks: prediction non-empty and ground truth empty -> Dice = IoU = 1, HD95 = ASD = 0; prediction empty
      -> Dice = IoU = HD95 = ASD = 0 (ground truth empty or not). Nothing is excluded, so a missed organ pulls the
      Dice mean down and the HD95 mean *down* too -- a known property of that protocol.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from monai.metrics.utils import get_edge_surface_distance

__all__ = [
    "DEFINITIONS",
    "METRIC_NAMES",
    "PROTOCOLS",
    "Protocol",
    "binary_scores",
    "case_scores",
    "distance_unit",
    "is_defined",
]

Protocol = Literal["symmetric", "transunet"]
PROTOCOLS: tuple[str, ...] = ("symmetric", "transunet")
METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "hd95", "asd")
_NAN = float("nan")

# What summary.json records about each protocol (the module docstring explains them).
DEFINITIONS: dict[str, dict[str, str]] = {
    "symmetric": {
        "dice": "2|P&G| / (|P| + |G|) per case and class",
        "iou": "|P&G| / |P|G| per case and class",
        "hd95": "max of the 95th percentiles of the two directed edge-distance sets (MONAI), spacing-aware",
        "asd": "mean of both directed edge-distance sets pooled (MONAI, symmetric=True), spacing-aware",
        "empty_masks": (
            "both empty: all scores undefined; one empty: dice = iou = 0, hd95 and asd undefined; undefined "
            "scores are excluded from means and counted in n_excluded"
        ),
    },
    "transunet": {
        "dice": "2|P&G| / (|P| + |G|) per case and class (medpy dc)",
        "iou": "|P&G| / |P|G| per case and class",
        "hd95": "95th percentile of both directed edge-distance sets pooled (medpy hd95), in voxels",
        "asd": "mean of both directed edge-distance sets pooled (medpy>=0.5 assd), in voxels",
        "empty_masks": (
            "prediction empty: dice = iou = hd95 = asd = 0; prediction non-empty and ground truth empty: "
            "dice = iou = 1, hd95 = asd = 0 (TransUNet's calculate_metric_percase); nothing is excluded"
        ),
    },
}


def distance_unit(protocol: str, spacing: Sequence[float] | None, spacing_unit: str = "mm") -> str:
    """Unit of HD95/ASD: ``"voxel"`` under ``transunet``; else ``spacing_unit`` with a spacing, ``"px"`` without."""
    if protocol == "transunet":
        return "voxel"
    return spacing_unit if spacing is not None else "px"


def _directed_distances(
    pred: torch.Tensor, target: torch.Tensor, spacing: Sequence[float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances from each edge voxel of ``pred`` to the edge of ``target`` and the reverse (both non-empty)."""
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument it passes to itself
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        _, (pred_to_target, target_to_pred), _ = get_edge_surface_distance(
            pred, target, spacing=None if spacing is None else list(spacing), symmetric=True, warn_empty=False
        )
    return pred_to_target.double(), target_to_pred.double()


def binary_scores(
    pred: torch.Tensor,
    target: torch.Tensor,
    spacing: Sequence[float] | None = None,
    protocol: Protocol = "symmetric",
) -> dict[str, float]:
    """Score one binary mask against one ground truth.

    Args:
        pred: Predicted mask, bool ``[H, W]`` or ``[D, H, W]``.
        target: Ground-truth mask of the same shape.
        spacing: Voxel size per axis (``(sy, sx)`` or ``(sz, sy, sx)``, mm); ``None`` measures in pixels. Ignored
            by ``protocol="transunet"``, which measures in voxels.
        protocol: ``"symmetric"`` or ``"transunet"`` (module docstring).

    Returns:
        ``{"dice", "iou", "hd95", "asd"}``; NaN marks an undefined score (``symmetric`` only).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground truth {tuple(target.shape)}")
    pred, target = pred.bool(), target.bool()
    n_pred, n_target = int(pred.sum()), int(target.sum())
    n_both = int((pred & target).sum())
    if protocol == "transunet":
        if n_pred == 0:
            return {"dice": 0.0, "iou": 0.0, "hd95": 0.0, "asd": 0.0}
        if n_target == 0:
            return {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}
        forward, backward = _directed_distances(pred, target, None)
        pooled = torch.cat([forward, backward])
        return {
            "dice": 2.0 * n_both / (n_pred + n_target),
            "iou": n_both / (n_pred + n_target - n_both),
            "hd95": float(torch.quantile(pooled, 0.95)),
            "asd": float(pooled.mean()),
        }
    if n_pred == 0 and n_target == 0:
        return dict.fromkeys(METRIC_NAMES, _NAN)
    overlap = {"dice": 2.0 * n_both / (n_pred + n_target), "iou": n_both / (n_pred + n_target - n_both)}
    if n_pred == 0 or n_target == 0:
        return {**overlap, "hd95": _NAN, "asd": _NAN}
    forward, backward = _directed_distances(pred, target, spacing)
    hd95 = max(float(torch.quantile(forward, 0.95)), float(torch.quantile(backward, 0.95)))
    return {**overlap, "hd95": hd95, "asd": float(torch.cat([forward, backward]).mean())}


def case_scores(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    protocol: Protocol = "symmetric",
) -> list[dict[str, float | int]]:
    """Score every foreground class of one case (a 2D image or a 3D volume).

    Args:
        pred: Predicted class ids ``[H, W]`` or ``[D, H, W]``.
        target: Ground-truth class ids, same shape.
        num_classes: ``K``, background (class 0) included; classes ``1 .. K-1`` are scored.
        spacing: See :func:`binary_scores`.
        protocol: See :func:`binary_scores`.

    Returns:
        One dict per foreground class: ``{"class": c, "dice", "iou", "hd95", "asd", "gt_voxels", "pred_voxels"}``
        (the voxel counts tell why a score is undefined).
    """
    pred_t, target_t = torch.as_tensor(pred), torch.as_tensor(target)
    if spacing is not None and len(spacing) != pred_t.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {pred_t.ndim}-D case")
    rows: list[dict[str, float | int]] = []
    for c in range(1, num_classes):
        p, t = pred_t == c, target_t == c
        scores = binary_scores(p, t, spacing, protocol)
        rows.append({"class": c, **scores, "gt_voxels": int(t.sum()), "pred_voxels": int(p.sum())})
    return rows


def is_defined(value: float | None) -> bool:
    """Whether a score enters means: not ``None``, NaN or inf."""
    return value is not None and math.isfinite(value)
