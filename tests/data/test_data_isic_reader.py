"""Tests of the ISIC 2018 reader (medpeft.data.isic) on a tiny fixture written with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from builders import write_isic
from PIL import Image

from medpeft.data import CaseFileError, DatasetNotFoundError, build_dataset
from medpeft.data.isic import ISIC_URL, OFFICIAL_SPLIT_FOLDERS, TRAIN_GROUND_TRUTH, TRAIN_INPUT

SIZE = 32


@pytest.fixture
def isic_root(tmp_path: Path) -> Path:
    root = tmp_path / "isic2018"
    input_dir, gt_dir = write_isic(root)
    # Files the reader must ignore.
    (root / "LICENSE.txt").write_text("CC-BY-NC")
    (input_dir / "ATTRIBUTION.txt").write_text("ISIC")
    (gt_dir / "LICENSE").write_text("CC-BY-NC")
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(input_dir / "ISIC_0000000_superpixels.png")
    return root


def _build(root: Path, split: str, **kwargs):
    kwargs.setdefault("seed", 0)
    return build_dataset("isic2018", root, split=split, image_size=SIZE, **kwargs)


def test_items_are_paired_shaped_and_binary(isic_root: Path) -> None:
    splits = {name: _build(isic_root, name) for name in ("train", "val", "test")}
    ids = [i for ds in splits.values() for i in ds.case_ids]
    assert sorted(ids) == [f"ISIC_{k:07d}" for k in range(8)] and len(set(ids)) == 8
    assert [len(ds) for ds in splits.values()] == [6, 1, 1]
    for ds in splits.values():
        for item in (ds[i] for i in range(len(ds))):
            image, label = item["image"], item["label"]
            assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
            assert label.shape == (1, SIZE, SIZE) and label.dtype == torch.int64
            assert 0.0 <= image.min() and image.max() <= 1.0
            assert set(label.unique().tolist()) <= {0, 1}
            k = int(item["name"].split("_")[1])
            assert label.float().mean().item() == pytest.approx((4 + 4 * k) / 40, abs=0.05)
            # Image and mask come from the same case and stay aligned (the augmentation included).
            agreement = ((image.mean(0) > 0.5) == label[0].bool()).float().mean().item()
            assert agreement > 0.95, item["name"]


def test_seeded_split_is_reproducible(isic_root: Path) -> None:
    val_ids = {seed: _build(isic_root, "val", seed=seed).case_ids for seed in range(6)}
    assert val_ids == {seed: _build(isic_root, "val", seed=seed).case_ids for seed in range(6)}
    assert len({tuple(ids) for ids in val_ids.values()}) > 1, "the seed has no effect on the split"


def test_augmentation_is_seeded_and_off_for_eval(isic_root: Path) -> None:
    a, b = _build(isic_root, "train"), _build(isic_root, "train")
    draws_a = [a[0]["label"] for _ in range(6)]
    draws_b = [b[0]["label"] for _ in range(6)]
    assert all(torch.equal(x, y) for x, y in zip(draws_a, draws_b))
    assert any(not torch.equal(draws_a[0], x) for x in draws_a[1:]), "training items are never augmented"
    plain = _build(isic_root, "train", augment=False)
    assert torch.equal(plain[0]["image"], plain[0]["image"])
    val = _build(isic_root, "val")
    assert torch.equal(val[0]["image"], val[0]["image"])


def test_official_validation_and_test_folders_are_used(isic_root: Path) -> None:
    write_isic(isic_root, range(20, 23), *OFFICIAL_SPLIT_FOLDERS["val"])
    write_isic(isic_root, range(30, 32), *OFFICIAL_SPLIT_FOLDERS["test"])
    assert _build(isic_root, "val").case_ids == [f"ISIC_{k:07d}" for k in range(20, 23)]
    assert _build(isic_root, "test").case_ids == [f"ISIC_{k:07d}" for k in range(30, 32)]
    assert _build(isic_root, "train").case_ids == [f"ISIC_{k:07d}" for k in range(8)]


def test_parent_folder_is_accepted(isic_root: Path) -> None:
    assert _build(isic_root.parent, "train").case_ids == _build(isic_root, "train").case_ids


def test_missing_root_explains_layout_and_download(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "isic2018"
    with pytest.raises(DatasetNotFoundError) as info:
        _build(missing, "train")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for expected in (str(missing), TRAIN_INPUT, TRAIN_GROUND_TRUTH, "ISIC_<id>.jpg", "_segmentation.png", ISIC_URL):
        assert expected in message
    assert "data.root" in message and "--set data.root=" in message


def test_missing_input_folder_names_the_root(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=f"'{tmp_path / 'empty'}' has no {TRAIN_INPUT}"):
        _build(tmp_path / "empty", "train")


def test_image_without_mask_names_the_image(isic_root: Path) -> None:
    (isic_root / TRAIN_GROUND_TRUTH / "ISIC_0000003_segmentation.png").unlink()
    with pytest.raises(ValueError, match=r"ISIC_0000003\.jpg: image has no mask"):
        _build(isic_root, "train")


def test_mask_without_image_names_the_mask(isic_root: Path) -> None:
    (isic_root / TRAIN_INPUT / "ISIC_0000005.jpg").unlink()
    with pytest.raises(ValueError, match=r"ISIC_0000005_segmentation\.png: mask has no image"):
        _build(isic_root, "train")


def test_bad_mask_values_name_the_file_and_values(isic_root: Path) -> None:
    path = isic_root / TRAIN_GROUND_TRUTH / "ISIC_0000002_segmentation.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[-3:] = 128
    Image.fromarray(mask).save(path)
    ds = _build(isic_root, "train", val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ValueError, match=r"ISIC_0000002_segmentation\.png: mask values .*\{0, 128, 255\}"):
        ds[ds.case_ids.index("ISIC_0000002")]


def test_truncated_jpeg_names_the_file(isic_root: Path) -> None:
    path = isic_root / TRAIN_INPUT / "ISIC_0000004.jpg"
    path.write_bytes(path.read_bytes()[:300])
    ds = _build(isic_root, "train", val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(CaseFileError, match=r"ISIC_0000004\.jpg: cannot read image"):
        ds[ds.case_ids.index("ISIC_0000004")]
    # With caching the file is read while the dataset is built, and the error is the same.
    with pytest.raises(CaseFileError, match=r"ISIC_0000004\.jpg"):
        _build(isic_root, "train", val_fraction=0.0, test_fraction=0.0, cache_rate=1.0)


def test_cached_dataset_matches_uncached(isic_root: Path) -> None:
    cached = _build(isic_root, "val", cache_rate=1.0)
    plain = _build(isic_root, "val")
    assert cached.case_ids == plain.case_ids
    assert torch.equal(cached[0]["image"], plain[0]["image"])


def test_unknown_dataset_lists_registered_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'isic2019'.*'demo'.*'isic2018'"):
        build_dataset("isic2019", tmp_path, split="train")
