"""Tests of the synthetic demo data (medpeft.data.synthetic): determinism, layout, labels, difficulty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpeft.data.isic import TRAIN_GROUND_TRUTH, TRAIN_INPUT
from medpeft.data.synthetic import generate_demo_isic, generate_source_task, render_lesion_case, render_source_case


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("generate", [generate_demo_isic, generate_source_task])
def test_generation_is_bit_for_bit_deterministic(tmp_path: Path, generate) -> None:
    a = _files(generate(tmp_path / "a", n_images=6, seed=7))
    b = _files(generate(tmp_path / "b", n_images=6, seed=7))
    assert a == b
    assert a != _files(generate(tmp_path / "c", n_images=6, seed=8))
    # Image i does not depend on how many images are generated.
    assert _files(generate(tmp_path / "d", n_images=3, seed=7)).items() <= a.items()


def test_demo_layout_counts_and_masks(tmp_path: Path) -> None:
    root = generate_demo_isic(tmp_path / "demo", n_images=24)
    assert sorted(p.name for p in root.iterdir()) == sorted([TRAIN_INPUT, TRAIN_GROUND_TRUTH])
    images = sorted((root / TRAIN_INPUT).iterdir())
    masks = sorted((root / TRAIN_GROUND_TRUTH).iterdir())
    assert [p.name for p in images] == [f"ISIC_{i:07d}.jpg" for i in range(24)]
    assert [p.name for p in masks] == [f"ISIC_{i:07d}_segmentation.png" for i in range(24)]
    fractions = []
    for image_path, mask_path in zip(images, masks):
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (128, 128))
            assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (128, 128))
            values = np.asarray(mask)
        assert set(np.unique(values).tolist()) <= {0, 255}
        fractions.append((values > 0).mean())
    assert 0.06 <= min(fractions) and max(fractions) <= 0.47
    assert max(fractions) - min(fractions) > 0.2, "lesion sizes barely vary"
    # No staging folder is left next to the result.
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_generation_is_idempotent_and_refuses_foreign_folders(tmp_path: Path) -> None:
    root = generate_demo_isic(tmp_path / "demo", n_images=4)
    first = root / TRAIN_INPUT / "ISIC_0000000.jpg"
    stamp = first.stat().st_mtime_ns
    assert generate_demo_isic(root, n_images=4) == root
    assert first.stat().st_mtime_ns == stamp, "an existing complete set was regenerated"
    with pytest.raises(FileExistsError, match="does not hold a generated set of 5 images"):
        generate_demo_isic(root, n_images=5)


def test_hairs_are_as_dark_as_pigment() -> None:
    """Darkness alone must not segment the lesion: hairs outside it are at least as dark as the pigment."""
    hair_grey, lesion_grey, skin_grey, oracle_dice = [], [], [], []
    for i in range(40):
        image, mask, hair = render_lesion_case(np.random.default_rng([0, 0, i]), 128)
        grey = image.astype(np.float64).mean(axis=2) / 255.0
        on_hair = (hair > 0.9) & ~mask
        if on_hair.sum() > 20:
            hair_grey.append(grey[on_hair].mean())
        lesion_grey.append(grey[mask].mean())
        skin_grey.append(grey[~mask & (hair < 0.1)].mean())
        # Best per-image darkness threshold, an upper bound for any intensity-only rule.
        dark = [grey < t for t in np.linspace(0.0, 1.0, 41)]
        oracle_dice.append(max(2 * (d & mask).sum() / (d.sum() + mask.sum()) for d in dark))
    assert len(hair_grey) > 20
    assert np.mean(hair_grey) <= np.mean(lesion_grey) < np.mean(skin_grey) - 0.15
    assert np.mean(oracle_dice) < 0.9


def test_source_task_differs_from_target() -> None:
    source = np.stack([render_source_case(np.random.default_rng([0, 1, i]))[0] for i in range(20)])
    target = np.stack([render_lesion_case(np.random.default_rng([0, 0, i]))[0] for i in range(20)])
    source_rgb = source.reshape(-1, 3).mean(0)
    target_rgb = target.reshape(-1, 3).mean(0)
    # Skin is red-dominated; the source backgrounds are grey-ish.
    assert target_rgb[0] - target_rgb[2] > 40
    assert abs(source_rgb[0] - source_rgb[2]) < 15
    masks = [render_source_case(np.random.default_rng([0, 1, i]))[1] for i in range(20)]
    assert all(0.08 <= m.mean() <= 0.5 for m in masks)
