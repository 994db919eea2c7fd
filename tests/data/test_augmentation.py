"""Modality augmentation policies (albumentations) and the 2D resize of masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medpeft.data.augmentation import DATASET_POLICIES, POLICIES, AlbumentationsD, resolve_augmentation
from medpeft.data.transforms import build_transforms
from medpeft.experiment.config import ConfigError, load_config


def _sample(channels: int = 1, size: int = 32) -> dict[str, torch.Tensor]:
    """An image whose first channel equals its mask (an off-centre square), so geometry can be compared."""
    label = torch.zeros(1, size, size, dtype=torch.uint8)
    label[0, 3:11, 18:29] = 1
    image = label.float().repeat(channels, 1, 1) * 0.8 + 0.1
    return {"image": image, "label": label}


def _apply(steps: list, seed: int, channels: int = 1) -> dict[str, torch.Tensor]:
    transform = AlbumentationsD(steps)
    transform.set_random_state(seed)
    return transform(_sample(channels))


def test_known_flip_moves_image_and_mask_together() -> None:
    out = _apply([{"HorizontalFlip": {"p": 1.0}}], seed=0)
    expected = _sample()
    assert torch.equal(out["label"], expected["label"].flip(-1))
    assert torch.allclose(out["image"], expected["image"].flip(-1))


def test_known_rotation_moves_image_and_mask_together() -> None:
    steps = [{"Affine": {"rotate": (90, 90), "p": 1.0}}]
    out = _apply(steps, seed=0)
    label = out["label"][0].numpy().astype(bool)
    assert label.sum() == 88  # a quarter turn of an 8 x 11 square keeps every pixel
    assert np.allclose(out["image"][0].numpy()[label], 0.9, atol=1e-3)  # the image's square is where the mask is
    assert not np.array_equal(label, _sample()["label"][0].numpy().astype(bool))


def test_ultrasound_policy_keeps_top_and_bottom() -> None:
    """BUSI: skin at the top, shadows below: no draw may move a row of the mask to another row."""
    rows = _sample()["label"][0].sum(dim=1)
    flipped = 0
    for seed in range(20):
        out = _apply(resolve_augmentation(None, DATASET_POLICIES["busi"]), seed)
        assert torch.equal(out["label"][0].sum(dim=1), rows)
        flipped += not torch.equal(out["label"], _sample()["label"])
    assert 0 < flipped < 20  # left-right flips do happen, half of the time


def test_dermoscopy_policy_turns_images_both_ways() -> None:
    rows = _sample()["label"][0].sum(dim=1)
    moved_vertically = sum(
        not torch.equal(_apply(POLICIES["dermoscopy"], seed, channels=3)["label"][0].sum(dim=1), rows)
        for seed in range(20)
    )
    assert moved_vertically > 5


def test_draws_follow_the_random_state() -> None:
    first, again = _apply(POLICIES["dermoscopy"], 3, 3), _apply(POLICIES["dermoscopy"], 3, 3)
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    others = [_apply(POLICIES["dermoscopy"], seed, 3)["image"] for seed in range(4, 8)]
    assert any(not torch.equal(first["image"], other) for other in others)


def test_every_dataset_has_a_policy_and_off_means_off() -> None:
    assert set(DATASET_POLICIES.values()) <= set(POLICIES)
    assert resolve_augmentation(False, "dermoscopy") == [] and resolve_augmentation("none", "slices") == []
    assert "VerticalFlip" not in str(POLICIES["slices"]) and "VerticalFlip" not in str(POLICIES["ultrasound"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sideways", "unknown augmentation policy 'sideways'"),
        ("[{NoSuchFlip: {p: 0.5}}]", "'NoSuchFlip' is not an albumentations transform"),
        ("[{HorizontalFlip: {p: 0.5}, VerticalFlip: {}}]", "one-key mapping"),
    ],
)
def test_bad_augmentation_config_names_the_key(tmp_path: Path, value: str, message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("data: {dataset: demo}\nmodel: {encoder: resnet18}\nadapter: {method: full}\n")
    with pytest.raises(ConfigError, match="data.augmentation") as err:
        load_config(config, [f"data.augmentation={value}"])
    assert message in str(err.value)


def test_masks_are_resized_at_pixel_centres(tmp_path: Path) -> None:
    """4 -> 2 px: pixel-centre sampling reads source columns 1 and 3; floor indexing would read 0 and 2."""
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:, [1, 3]] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(tmp_path / "image.png")
    record = {"image": str(tmp_path / "image.png"), "label": str(tmp_path / "mask.png"), "name": "x"}
    label = build_transforms(2)(record)["label"]
    assert torch.equal(label, torch.ones(1, 2, 2, dtype=torch.int64))


def test_a_centred_lesion_stays_centred(tmp_path: Path) -> None:
    """A mask symmetric about the image centre stays symmetric when downsized (no half-pixel shift)."""
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[25:35, 22:38] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(tmp_path / "image.png")
    record = {"image": str(tmp_path / "image.png"), "label": str(tmp_path / "mask.png"), "name": "x"}
    label = build_transforms(16)(record)["label"][0]
    assert label.sum() > 0
    assert torch.equal(label, label.flip(0)) and torch.equal(label, label.flip(1))
