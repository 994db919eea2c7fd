"""The ``loss`` section reaches MONAI's DiceCELoss: values checked against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from medpeft.experiment.config import LossConfig
from medpeft.models import build_segmenter
from medpeft.training.module import SegmentationModule


def _empty_mask_loss_by_hand(foreground_prob: float, pixels: int, smooth: float) -> float:
    """Per-image DiceCE with background, softmax, on an image whose mask is empty and whose every pixel has the
    same foreground probability."""
    p = foreground_prob
    dice_background = (2 * pixels * (1 - p) + smooth) / (pixels * (1 - p) + pixels + smooth)
    dice_foreground = smooth / (pixels * p + smooth)  # no foreground in the mask: intersection 0
    return 1 - (dice_background + dice_foreground) / 2 - math.log(1 - p)


@pytest.mark.parametrize("smooth", [1e-5, 1.0])
def test_loss_options_reach_dice_ce_with_smoothing(smooth: float) -> None:
    module = SegmentationModule(
        build_segmenter("resnet18", in_channels=1, num_classes=2, img_size=32),
        num_classes=2,
        loss_options=LossConfig(smooth=smooth).dice_ce_options(),
    )
    logit = 0.7  # foreground logit over a background logit of 0: p = sigmoid(0.7)
    logits = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), logit)], dim=1)  # [B=1, C=2, 4, 4]
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    expected = _empty_mask_loss_by_hand(torch.sigmoid(torch.tensor(logit)).item(), pixels=16, smooth=smooth)
    assert module.loss(logits, label).item() == pytest.approx(expected, rel=1e-5)


def test_a_batch_dice_term_adds_the_batch_form_of_the_dice_loss() -> None:
    from monai.losses import DiceCELoss, DiceLoss

    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8)
    labels = (torch.rand(3, 1, 8, 8) > 0.7).long()
    labels[1] = 0  # an image without the class: where the batch form differs most
    options = LossConfig(lambda_dice=0.5, lambda_dice_batch=0.5).dice_ce_options()
    module = SegmentationModule(torch.nn.Identity(), num_classes=2, loss_options=options)
    per_image = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, smooth_nr=1.0, smooth_dr=1.0)
    batch = DiceLoss(to_onehot_y=True, softmax=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    expected = per_image(logits, labels) + 0.5 * batch(logits, labels)
    torch.testing.assert_close(module.loss(logits, labels), expected)
    assert not torch.allclose(batch(logits, labels), DiceLoss(to_onehot_y=True, softmax=True)(logits, labels))
