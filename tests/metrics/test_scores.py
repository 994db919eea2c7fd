"""Per-case scores against hand-computed values, MONAI's metric classes and medpy (an independent implementation)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou

from medpeft.metrics import binary_scores, case_scores, distance_unit

medpy_binary = pytest.importorskip("medpy.metric.binary")


def _dot(shape: tuple[int, ...], *points: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for point in points:
        mask[point] = True
    return mask


def test_hand_computed_2d_anisotropic() -> None:
    # one pixel each, 3 columns apart; columns are 0.5 mm wide, rows 2 mm: every distance is 1.5 mm
    pred, target = _dot((5, 8), (2, 5)), _dot((5, 8), (2, 2))
    scores = binary_scores(pred, target, spacing=(2.0, 0.5))
    assert scores == {"dice": 0.0, "iou": 0.0, "hd95": 1.5, "asd": 1.5}


def test_hand_computed_3d_anisotropic() -> None:
    # target: voxels (1,2,2) and (1,2,3); prediction adds (3,2,2): 2 slices (of 5 mm) away from the target.
    target = _dot((5, 5, 5), (1, 2, 2), (1, 2, 3))
    pred = _dot((5, 5, 5), (1, 2, 2), (1, 2, 3), (3, 2, 2))
    scores = binary_scores(pred, target, spacing=(5.0, 1.0, 0.7))
    assert scores["dice"] == pytest.approx(2 * 2 / 5) and scores["iou"] == pytest.approx(2 / 3)
    # pred -> target distances [0, 0, 10]; target -> pred [0, 0]. 95th percentiles (linear): 9.0 and 0 -> HD95 9.0
    assert scores["hd95"] == pytest.approx(9.0)
    assert scores["asd"] == pytest.approx(10.0 / 5)  # pooled: (0 + 0 + 10 + 0 + 0) / 5
    # TransUNet pools the directions before the percentile, in voxels: [0, 0, 2, 0, 0] -> 95th percentile 1.6
    transunet = binary_scores(pred, target, spacing=(5.0, 1.0, 0.7), protocol="transunet")
    assert transunet["hd95"] == pytest.approx(1.6) and transunet["asd"] == pytest.approx(2 / 5)


@pytest.mark.parametrize(("shape", "spacing"), [((24, 28), (2.0, 0.5)), ((6, 18, 20), (5.0, 1.2, 0.8))])
def test_symmetric_equals_monai_metric_functions(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    generator = torch.Generator().manual_seed(len(shape))
    pred, target = torch.rand(shape, generator=generator) > 0.6, torch.rand(shape, generator=generator) > 0.5
    scores = binary_scores(pred, target, spacing=spacing)

    def one_hot(mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([~mask, mask])[None].float()  # [1, 2, *shape]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        expected = {
            "dice": compute_dice(one_hot(pred), one_hot(target), include_background=False),
            "iou": compute_iou(one_hot(pred), one_hot(target), include_background=False),
            "hd95": compute_hausdorff_distance(one_hot(pred), one_hot(target), percentile=95, spacing=list(spacing)),
            "asd": compute_average_surface_distance(
                one_hot(pred), one_hot(target), symmetric=True, spacing=list(spacing)
            ),
        }
    for name, value in expected.items():
        assert scores[name] == pytest.approx(float(value), rel=1e-5), name


@pytest.mark.parametrize("shape", [(30, 26), (7, 16, 18)])
def test_transunet_equals_medpy(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    pred, target = rng.random(shape) > 0.55, rng.random(shape) > 0.5
    scores = binary_scores(torch.from_numpy(pred), torch.from_numpy(target), protocol="transunet")
    assert scores["dice"] == pytest.approx(medpy_binary.dc(pred, target))
    assert scores["iou"] == pytest.approx(medpy_binary.jc(pred, target))
    assert scores["hd95"] == pytest.approx(medpy_binary.hd95(pred, target), rel=1e-6)
    assert scores["asd"] == pytest.approx(medpy_binary.assd(pred, target), rel=1e-6)


def test_symmetric_hd_directions_match_medpy_with_spacing() -> None:
    # medpy has no max-of-directions HD95, but its directed distances are the same sets: compare the 100th
    # percentile (plain Hausdorff), where pooling and max-of-directions agree, with voxel spacing.
    rng = np.random.default_rng(3)
    pred, target = rng.random((6, 14, 15)) > 0.6, rng.random((6, 14, 15)) > 0.5
    spacing = (4.0, 0.9, 1.3)
    from medpeft.metrics.scores import _directed_distances

    forward, backward = _directed_distances(torch.from_numpy(pred), torch.from_numpy(target), spacing)
    assert float(torch.cat([forward, backward]).max()) == pytest.approx(medpy_binary.hd(pred, target, spacing))
    assert float(forward.mean()) == pytest.approx(medpy_binary.asd(pred, target, spacing))


EMPTY, DOT = torch.zeros(4, 4, dtype=torch.bool), _dot((4, 4), (1, 1))


def test_empty_masks_symmetric_protocol_is_never_zero_or_inf() -> None:
    both_empty = binary_scores(EMPTY, EMPTY)
    assert all(math.isnan(v) for v in both_empty.values())
    for pred, target in ((DOT, EMPTY), (EMPTY, DOT)):  # false positive, miss
        scores = binary_scores(pred, target)
        assert scores["dice"] == 0.0 and scores["iou"] == 0.0
        assert math.isnan(scores["hd95"]) and math.isnan(scores["asd"])


def test_empty_masks_transunet_protocol() -> None:
    zeros = {"dice": 0.0, "iou": 0.0, "hd95": 0.0, "asd": 0.0}
    assert binary_scores(EMPTY, EMPTY, protocol="transunet") == zeros  # TransUNet scores this 0, not 1
    assert binary_scores(EMPTY, DOT, protocol="transunet") == zeros  # missed organ: Dice 0 and HD95 0
    assert binary_scores(DOT, EMPTY, protocol="transunet") == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}


def test_case_scores_per_class_and_units() -> None:
    target = torch.tensor([[0, 1, 1], [2, 2, 0], [0, 0, 0]])
    pred = torch.tensor([[0, 1, 0], [2, 2, 0], [0, 0, 3]])
    rows = case_scores(pred, target, num_classes=4, spacing=(1.0, 1.0))
    assert [row["class"] for row in rows] == [1, 2, 3]
    assert rows[0]["dice"] == pytest.approx(2 / 3) and rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0
    assert rows[2]["dice"] == 0.0 and math.isnan(rows[2]["hd95"])  # class 3: a false positive
    assert (rows[2]["gt_voxels"], rows[2]["pred_voxels"]) == (0, 1)
    with pytest.raises(ValueError, match="spacing"):
        case_scores(pred, target, num_classes=4, spacing=(1.0, 1.0, 1.0))
    assert distance_unit("symmetric", (1.0, 1.0)) == "mm" and distance_unit("symmetric", None) == "px"
    assert distance_unit("transunet", (1.0, 1.0)) == "voxel"
