"""Removing small predicted components, and choosing the size on validation: hand-built masks with known answers."""

from __future__ import annotations

import pytest
import torch

from medpeft.evaluation.postprocess import (
    MIN_COMPONENT_SIZES,
    choose_min_component_size,
    dice_all_per_case,
    remove_small_components,
)


def _mask() -> torch.Tensor:
    """16 x 16 class ids: a 4 x 5 blob of class 1 (20 px), a 2 x 2 blob of class 1 (4 px), a 3 x 3 blob of class 2
    (9 px), and a diagonal pair of class 1 pixels (two 1-px components under face connectivity)."""
    mask = torch.zeros(16, 16, dtype=torch.long)
    mask[1:5, 1:6] = 1
    mask[10:12, 10:12] = 1
    mask[1:4, 10:13] = 2
    mask[14, 1] = mask[15, 2] = 1
    return mask


def test_components_below_the_size_go_per_class_and_face_connected() -> None:
    mask = _mask()
    kept = remove_small_components(mask, num_classes=3, min_size=5, network_size=16)
    expected = mask.clone()
    expected[10:12, 10:12] = 0  # 4 px < 5
    expected[14, 1] = expected[15, 2] = 0  # diagonal neighbours are two components of 1 px
    assert torch.equal(kept, expected)  # the 20 px blob and the 9 px class-2 blob stay
    assert torch.equal(remove_small_components(mask, 3, 10, 16), torch.where(mask == 2, 0, expected))
    assert remove_small_components(mask, 3, 0, 16) is mask
    assert torch.equal(remove_small_components(mask, 3, 9, 16) == 2, mask == 2)  # exactly the size: kept


def test_the_size_counts_network_pixels_at_any_grid() -> None:
    # the same mask upsampled 2 x 2 (a native-size prediction of a 16 px network): each pixel is 1/4 network pixel
    big = _mask().repeat_interleave(2, 0).repeat_interleave(2, 1)
    kept = remove_small_components(big, num_classes=3, min_size=5, network_size=16)
    expected = remove_small_components(_mask(), 3, 5, 16).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(kept, expected)
    volume = torch.stack([_mask(), _mask()])  # 3D: a component spans slices (face connectivity along depth)
    assert int((remove_small_components(volume, 3, 5, 16) == 1).sum()) == 2 * 20 + 2 * 4  # 8 px blobs stay


def test_dice_all_scores_empty_truth_one_or_zero() -> None:
    empty = torch.zeros(4, 4, dtype=torch.long)
    blob = empty.clone()
    blob[:2, :2] = 1
    assert dice_all_per_case(empty, empty, 2) == 1.0
    assert dice_all_per_case(blob, empty, 2) == 0.0
    half = empty.clone()
    half[:2, :1] = 1
    assert dice_all_per_case(half, blob, 2) == pytest.approx(2 * 2 / 6)


def test_choice_maximises_validation_dice_all_smallest_on_ties() -> None:
    lesion = torch.zeros(32, 32, dtype=torch.long)
    lesion[4:14, 4:14] = 1  # 100 px
    speck = torch.zeros(32, 32, dtype=torch.long)
    speck[20:25, 20:25] = 1  # a 25 px false positive on an empty scan
    empty = torch.zeros(32, 32, dtype=torch.long)
    cases = [(lesion, lesion), (speck, empty)]
    best, means = choose_min_component_size(cases, num_classes=2, network_size=32)
    assert best == 40  # 40 removes the speck (1.0 on both cases) and keeps the lesion; 80 does too, but is larger
    assert means[0] == 0.5 and means[40] == means[80] == 1.0 and means[160] == 0.5
    assert choose_min_component_size([(lesion, lesion)], 2, 32)[0] == 0  # nothing to gain: keep everything
    assert set(means) == set(MIN_COMPONENT_SIZES)
