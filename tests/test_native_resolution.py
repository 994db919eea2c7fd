"""Scoring 2D test images at their own size (``resolution="native"``) against hand-computed values, on files that
are not square, with a network whose prediction has a place: a transposed, shifted or nearest resize fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medpeft.data import generate_demo_isic
from medpeft.evaluation.evaluator import evaluate_split
from medpeft.experiment import load_config

REPO = Path(__file__).resolve().parents[1]
# The files' size (the network sees 32 x 32): chosen so that a nearest or an align_corners=True resize gives other
# masks along both axes, and so that no output pixel centre falls exactly on the band's edge (a tie).
HEIGHT, WIDTH = 53, 66
SIZE, BAND = 32, 22  # the network predicts the first BAND rows (or columns) of its 32 x 32 input


class Band(nn.Module):
    """Logits +1 for class 1 on the first ``BAND`` rows (``axis=2``) or columns (``axis=3``) of the input, -1 elsewhere.

    Resized bilinearly with pixel-centre alignment to ``N`` pixels along that axis, the logit changes sign halfway
    between input pixels ``BAND - 1`` and ``BAND``, i.e. at input coordinate ``BAND - 0.5``: output pixel ``k`` (centre
    at input coordinate ``(k + 0.5) * SIZE / N - 0.5``) is class 1 iff ``k < BAND * N / SIZE - 0.5``.
    """

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the evaluator a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        index = torch.arange(h if self.axis == 2 else w)
        band = torch.where(index < BAND, 1.0, -1.0)
        foreground = band[:, None].expand(h, w) if self.axis == 2 else band[None, :].expand(h, w)
        return torch.stack([-foreground, foreground])[None].expand(b, 2, h, w) + self.anchor


def _expected_prediction(axis: int) -> np.ndarray:
    """The class-1 mask ``[HEIGHT, WIDTH]`` of :class:`Band` at the files' size, from the docstring's formula."""
    n = HEIGHT if axis == 2 else WIDTH
    inside = np.arange(n) < BAND * n / SIZE - 0.5
    return np.broadcast_to(inside[:, None] if axis == 2 else inside[None, :], (HEIGHT, WIDTH))


@pytest.fixture(scope="module")
def non_square_isic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo in the ISIC layout with every image and mask resized to WIDTH x HEIGHT."""
    root = generate_demo_isic(tmp_path_factory.mktemp("isic") / "isic", n_images=20, size=48)
    for path in root.rglob("*.*"):
        if path.suffix in (".jpg", ".png"):
            with Image.open(path) as image:
                resample = Image.Resampling.NEAREST if path.suffix == ".png" else Image.Resampling.BILINEAR
                image.resize((WIDTH, HEIGHT), resample).save(path)
    return root


@pytest.mark.parametrize("axis", [2, 3], ids=["rows", "columns"])
def test_native_dice_equals_the_hand_computed_value(non_square_isic: Path, axis: int) -> None:
    overrides = ["data.dataset=isic2018", f"data.root={non_square_isic}", f"data.image_size={SIZE}"]
    cfg = load_config(
        REPO / "configs" / "demo_tcur.yaml", [*overrides, "model.pretrained=false", "data.train_cases=null"]
    )
    result = evaluate_split(Band(axis), cfg, split="test", resolution="native", progress=False)
    assert result.summary["resolution"] == "native" and len(result.rows) >= 3
    predicted = _expected_prediction(axis)
    assert 0 < predicted.sum() < predicted.size
    for row in result.rows:
        mask_file = non_square_isic / "ISIC2018_Task1_Training_GroundTruth" / f"{row['case']}_segmentation.png"
        with Image.open(mask_file) as mask:
            truth = np.asarray(mask) > 0
        assert truth.shape == (HEIGHT, WIDTH)
        overlap = int((truth & predicted).sum())
        assert row["dice"] == pytest.approx(2 * overlap / (truth.sum() + predicted.sum()), abs=1e-6)
        assert row["gt_voxels"] == truth.sum() and row["pred_voxels"] == predicted.sum()
        assert torch.equal(result.views[row["case"]].pred.bool(), torch.from_numpy(predicted.copy()))


def test_train_resolution_scores_the_network_grid(non_square_isic: Path) -> None:
    overrides = ["data.dataset=isic2018", f"data.root={non_square_isic}", f"data.image_size={SIZE}"]
    cfg = load_config(
        REPO / "configs" / "demo_tcur.yaml", [*overrides, "model.pretrained=false", "data.train_cases=null"]
    )
    result = evaluate_split(Band(3), cfg, split="test", progress=False)
    assert result.summary["resolution"] == "train"
    assert all(row["pred_voxels"] == BAND * SIZE for row in result.rows)
