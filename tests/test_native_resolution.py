"""Scoring 2D test images at their own size (``resolution="native"``) against a hand-computed value."""

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


class AllForeground(nn.Module):
    """Logits that make every pixel class 1 at any size: the native Dice is then 2|M| / (|M| + H W)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the evaluator a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return torch.stack([torch.zeros(b, h, w), torch.ones(b, h, w)], dim=1) + self.anchor


def test_native_dice_equals_the_hand_computed_value(tmp_path: Path) -> None:
    root = generate_demo_isic(tmp_path / "isic", n_images=20, size=48)  # files at 48 px, scored from 32 px logits
    overrides = ["data.dataset=isic2018", f"data.root={root}", "data.image_size=32", "model.pretrained=false"]
    cfg = load_config(REPO / "configs" / "demo_tcur.yaml", overrides)
    result = evaluate_split(AllForeground(), cfg, split="test", resolution="native", progress=False)
    assert result.summary["resolution"] == "native" and len(result.rows) >= 3
    for row in result.rows:
        with Image.open(root / "ISIC2018_Task1_Training_GroundTruth" / f"{row['case']}_segmentation.png") as mask:
            foreground = int((np.asarray(mask) > 0).sum())
        assert row["dice"] == pytest.approx(2 * foreground / (foreground + 48 * 48), abs=1e-6)
        assert row["gt_voxels"] == foreground and row["pred_voxels"] == 48 * 48
    at_train_size = evaluate_split(AllForeground(), cfg, split="test", progress=False)
    assert at_train_size.summary["resolution"] == "train" and all(
        r["pred_voxels"] == 32 * 32 for r in at_train_size.rows
    )
