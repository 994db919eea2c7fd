"""Tests of the BUSI reader (medpeft.data.busi): a tiny Pillow fixture in the official layout, plus the shared real
samples and the shared 256 px copy where they exist (skipped cleanly otherwise).

The fixture has 11 benign, 6 malignant and 4 normal 32x32 noise images (names with spaces and parentheses); noise
images do not correlate, so the only near-duplicate groups are the two planted ones: ``benign (3)`` is ``benign (1)``
plus noise and a caliper cross, and ``benign (11)`` is a byte-identical copy of ``malignant (6)``.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import BUSI_SIZE, busi_noise, busi_rect, save_l, write_busi
from PIL import Image

import medpeft.data.busi  # noqa: F401  (registers "busi")
from medpeft.data import CaseFileError, DatasetNotFoundError, SegmentationDataModule, build_dataset
from medpeft.data.busi import (
    BUSI_FOLDER,
    BUSI_KAGGLE,
    BUSI_URL,
    LoadBusiCased,
    busi_near_duplicate_groups,
    busi_split,
    list_busi_cases,
    near_duplicate_labels,
    resolve_busi_root,
)
from medpeft.data.splits import split_cases
from medpeft.data.transforms import load_binary_mask

SIZE = BUSI_SIZE
SHARED = Path(__file__).resolve().parents[3] / "shared"
REAL_SAMPLES = SHARED / "real-samples" / "busi"
REAL_256 = SHARED / "real-data" / "busi256"


@pytest.fixture
def busi_root(tmp_path: Path) -> Path:
    write_busi(tmp_path / "busi")
    return tmp_path / "busi"


def _build(root: Path, split: str, **kwargs):
    kwargs.setdefault("image_size", SIZE)
    return build_dataset("busi", root, split=split, **kwargs)


def _load(base: Path, name: str) -> dict:
    case = next(case for case in list_busi_cases(base) if case.name == name)
    return LoadBusiCased()(case.record())


# ---------------------------------------------------------------------------------------------- reading and items


def test_items_are_one_channel_binary_and_complete(busi_root: Path) -> None:
    splits = {name: _build(busi_root, name) for name in ("train", "val", "test")}
    ids = [case_id for ds in splits.values() for case_id in ds.case_ids]
    assert len(ids) == len(set(ids)) == 21
    assert "benign (10)" in ids and "normal (4)" in ids
    for ds in splits.values():
        for item in (ds[i] for i in range(len(ds))):
            image, label = item["image"], item["label"]
            assert image.shape == (1, SIZE, SIZE) and image.dtype == torch.float32
            assert label.shape == (1, SIZE, SIZE) and label.dtype == torch.int64
            assert 0.0 <= image.min() and image.max() <= 1.0
            assert set(label.unique().tolist()) <= {0, 1}


def test_masks_are_merged_by_union(busi_root: Path) -> None:
    base = busi_root / BUSI_FOLDER
    expected = (
        (busi_rect(slice(0, 5), slice(0, 6)) > 0)
        | (busi_rect(slice(20, 24), slice(20, 25)) > 0)
        | (busi_rect(slice(3, 7), slice(3, 8)) > 0)
    )
    assert expected.sum() == 30 + 20 + 20 - 6  # the mode-1 mask overlaps the first one on 2x3 pixels
    # The RGBA mask alone: 20 pixels, not the 25 %+ that averaging its four raw channels would suggest.
    assert load_binary_mask(base / "benign" / "benign (2)_mask_1.png").sum() == 20
    assert (_load(base, "benign (2)")["label"][0] == expected).all()
    assert _load(base, "benign (1)")["label"].sum() == 64  # mode 1
    assert all(_load(base, f"normal ({k})")["label"].sum() == 0 for k in range(1, 5))  # all-zero RGB masks
    # Through the whole pipeline at the native size (identity resize), without augmentation.
    ds = _build(busi_root, "train", val_fraction=0.0, test_fraction=0.0, augment=False)
    item = ds[ds.case_ids.index("benign (2)")]
    assert item["label"].sum().item() == expected.sum()


def test_rgb_images_become_their_luma(busi_root: Path) -> None:
    base = busi_root / BUSI_FOLDER
    image = _load(base, "malignant (1)")["image"]
    rgb = np.stack([busi_noise(101), busi_noise(102), busi_noise(103)], axis=-1)
    assert image.shape == (1, SIZE, SIZE)
    assert np.array_equal(image[0], np.asarray(Image.fromarray(rgb).convert("L"), np.float32))
    assert np.array_equal(_load(base, "benign (1)")["image"][0], busi_noise(1))  # grey-as-RGB stays exact


def test_include_normal_false_drops_normal(busi_root: Path) -> None:
    ids = [i for name in ("train", "val", "test") for i in _build(busi_root, name, include_normal=False).case_ids]
    assert len(ids) == 17 and not any(i.startswith("normal") for i in ids)


def test_root_may_be_the_dataset_folder_itself(busi_root: Path) -> None:
    assert resolve_busi_root(busi_root) == resolve_busi_root(busi_root / BUSI_FOLDER) == busi_root / BUSI_FOLDER
    assert _build(busi_root / BUSI_FOLDER, "val").case_ids == _build(busi_root, "val").case_ids


def test_datamodule_sizes_a_one_channel_model(busi_root: Path) -> None:
    dm = SegmentationDataModule(dataset="busi", root=str(busi_root), image_size=SIZE, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert dm.in_channels == 1 and dm.num_classes == 2
    assert batch["image"].shape[1:] == (1, SIZE, SIZE)


# -------------------------------------------------------------------------------- near-duplicates and splitting


def test_near_duplicate_groups_are_found(busi_root: Path) -> None:
    assert busi_near_duplicate_groups(busi_root) == [["benign (1)", "benign (3)"], ["benign (11)", "malignant (6)"]]


def test_identical_files_are_grouped_even_without_correlation() -> None:
    flat = np.full((4, 16), 7.0)  # constant thumbnails: the correlation is undefined and joins nothing
    labels = near_duplicate_labels(flat, ["a", "b", "a", "c"], threshold=0.93)
    assert labels.tolist() == [0, 1, 0, 2]
    chain = np.stack([np.arange(16.0), np.arange(16.0) ** 1.1, np.arange(16.0) ** 1.2, -np.arange(16.0)])
    # 0~1 and 1~2 correlate strongly, 3 is anti-correlated: grouping is transitive and one-sided.
    assert near_duplicate_labels(chain, ["w", "x", "y", "z"], threshold=0.99).tolist() == [0, 0, 0, 1]


def test_split_keeps_groups_together_and_is_deterministic(busi_root: Path) -> None:
    groups = busi_near_duplicate_groups(busi_root)
    seen = set()
    for seed in range(6):
        split = {name: [c.name for c in cases] for name, cases in busi_split(busi_root, seed=seed).items()}
        assert split == {name: [c.name for c in cases] for name, cases in busi_split(busi_root, seed=seed).items()}
        where = {case_id: name for name, ids in split.items() for case_id in ids}
        for group in groups:
            assert len({where[case_id] for case_id in group}) == 1, (seed, group)
        for name in ("val", "test"):  # stratified: every split gets both lesion classes
            assert {case_id.split(" ")[0] for case_id in split[name]} >= {"benign", "malignant"}, (seed, name)
        seen.add(tuple(split["test"]))
    assert len(seen) > 1, "the seed has no effect on the split"


def test_stratified_split_cases_keeps_class_ratios() -> None:
    ids = [f"case_{i:03d}" for i in range(200)]
    strata = {case_id: ("a" if i < 120 else "b" if i < 170 else "c") for i, case_id in enumerate(ids)}
    groups = {case_id: f"pair_{i // 2}" for i, case_id in enumerate(ids)}  # strata boundaries are even
    for seed in range(3):
        split = split_cases(ids, 0.15, 0.15, seed=seed, groups=groups, strata=strata)
        for name, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            counts = Counter(strata[case_id] for case_id in split[name])
            for stratum, total in (("a", 120), ("b", 50), ("c", 30)):
                assert abs(counts[stratum] - share * total) <= 2, (seed, name, stratum, counts)
    # Without strata the split is the unstratified one; a group spanning strata follows its majority.
    assert split_cases(ids, 0.15, 0.15, seed=0, strata=None) == split_cases(ids, 0.15, 0.15, seed=0)
    mixed = split_cases(
        ["x1", "x2", "y1"],
        0.0,
        0.0,
        seed=0,
        groups={"x1": "g", "x2": "g", "y1": "g"},
        strata={"x1": "x", "x2": "x", "y1": "y"},
    )
    assert mixed["train"] == ["x1", "x2", "y1"]


# ------------------------------------------------------------------------------------------------------ errors


def test_missing_root_says_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        _build(tmp_path / "nowhere", "train")
    message = str(info.value)
    for part in ("nowhere", BUSI_FOLDER, BUSI_URL, BUSI_KAGGLE, "data.root", "--set data.root=PATH"):
        assert part in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="neither"):
        _build(tmp_path / "empty", "train")


def test_missing_class_folder_is_reported(busi_root: Path) -> None:
    shutil.rmtree(busi_root / BUSI_FOLDER / "normal")
    with pytest.raises(DatasetNotFoundError, match="normal"):
        _build(busi_root, "train")
    assert len(_build(busi_root, "train", include_normal=False)) > 0


def test_unpaired_files_are_named(busi_root: Path) -> None:
    benign = busi_root / BUSI_FOLDER / "benign"
    (benign / "benign (5)_mask.png").unlink()
    with pytest.raises(CaseFileError, match=r"benign \(5\)\.png: image has no mask"):
        _build(busi_root, "train")
    (benign / "benign (5).png").unlink()
    save_l(busi_rect(slice(0, 2), slice(0, 2)), benign / "benign (99)_mask_1.png")
    with pytest.raises(CaseFileError, match=r"benign \(99\)_mask_1\.png: mask has no image"):
        _build(busi_root, "train")


@pytest.mark.parametrize("problem", ["truncated", "grey mask", "mask size"])
def test_bad_files_are_named_or_skipped(busi_root: Path, problem: str) -> None:
    folder = busi_root / BUSI_FOLDER / "malignant"
    if problem == "truncated":
        bad = folder / "malignant (3).png"
        bad.write_bytes(bad.read_bytes()[:200])
    elif problem == "grey mask":
        bad = folder / "malignant (3)_mask.png"
        save_l(busi_rect(slice(0, 4), slice(0, 4)) // 2, bad)  # 0 / 127: not a binary mask
    else:
        bad = folder / "malignant (3)_mask.png"
        save_l(np.zeros((SIZE, SIZE + 4), np.uint8), bad)
    with pytest.raises(CaseFileError) as info:
        _build(busi_root, "train")
    assert info.value.path == str(bad)
    with pytest.warns(UserWarning, match="skipping 1 unusable"):
        ids = [i for name in ("train", "val", "test") for i in _build(busi_root, name, skip_bad_cases=True).case_ids]
    assert len(ids) == 20 and "malignant (3)" not in ids


# ------------------------------------------------------------------------------------------------ real BUSI data


@pytest.fixture(scope="module")
def real_samples() -> Path:
    if not REAL_SAMPLES.is_dir():
        pytest.skip(f"real BUSI samples not found at {REAL_SAMPLES}")
    return REAL_SAMPLES


def test_real_samples_match_provenance(real_samples: Path) -> None:
    base = resolve_busi_root(real_samples)
    cases = {case.name: case for case in list_busi_cases(base)}
    assert len(cases) == 8 and sum(len(case.masks) for case in cases.values()) == 11
    assert len(cases["benign (195)"].masks) == 3
    loaded = {name: LoadBusiCased()(case.record()) for name, case in cases.items()}
    for name, item in loaded.items():
        assert item["image"].shape[0] == 1 and item["image"].shape[1:] == item["label"].shape[1:], name
        assert item["image"].std() > 10, name  # a real scan, not a blank decode
    assert all(loaded[f"normal ({k})"]["label"].sum() == 0 for k in (1, 2))
    # benign (4): the RGBA _mask_1 is a second, separate lesion of 624 pixels; the union holds both.
    first = load_binary_mask(cases["benign (4)"].masks[0])
    second = load_binary_mask(cases["benign (4)"].masks[1])
    assert second.sum() == 624 and not (first & second).any()
    union = loaded["benign (4)"]["label"]
    assert union.sum() == first.sum() + 624 and union.mean() < 0.1  # never the ~25 % of an averaged RGBA array
    assert loaded["benign (195)"]["label"].sum() > max(load_binary_mask(m).sum() for m in cases["benign (195)"].masks)
    ds = build_dataset("busi", real_samples, split="train", image_size=64, val_fraction=0.0, test_fraction=0.0)
    assert len(ds) == 8 and ds[0]["image"].shape == (1, 64, 64)


def _listed_groups(path: Path) -> list[list[str]]:
    """Read near_duplicate_groups.txt: ``#`` comments, then one group per line, ``class/name.png | ...``."""
    groups = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            groups.append([Path(entry.strip()).stem for entry in line.split("|")])
    return groups


def test_real_256_copy_groups_and_split() -> None:
    if not REAL_256.is_dir():
        pytest.skip(f"BUSI 256 px copy not found at {REAL_256}")
    found = busi_near_duplicate_groups(REAL_256)
    listed = _listed_groups(REAL_256 / "near_duplicate_groups.txt")
    print(
        f"BUSI 256 px copy: {len(found)} near-duplicate groups ({sum(map(len, found))} images) found; "
        f"{len(listed)} listed"
    )
    mine = {case_id: index for index, group in enumerate(found) for case_id in group}
    contained = sum(len({mine.get(case_id, case_id) for case_id in group}) == 1 for group in listed)
    for seed in range(3):
        split = busi_split(REAL_256, seed=seed)
        assert sum(map(len, split.values())) == 643
        where = {case.name: name for name, cases in split.items() for case in cases}
        for group in listed:  # no listed group straddles train / val / test, contained in one of ours or not
            assert len({where[case_id] for case_id in group}) == 1, (seed, group)
    assert contained == len(listed), f"only {contained} of {len(listed)} listed groups lie inside one of ours"


class _Speck(torch.nn.Module):
    """Predicts class 1 on a 3 x 3 speck in the top-left corner of any input, background elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = torch.full(x.shape[-2:], -1.0)
        foreground[:3, :3] = 1.0
        return torch.stack([-foreground, foreground])[None].expand(len(x), 2, *x.shape[-2:]) + self.anchor


def test_auto_min_component_size_is_chosen_on_val_and_removes_specks_on_normal_scans(tmp_path: Path) -> None:
    from medpeft.evaluation.evaluator import evaluate_split
    from medpeft.experiment.config import load_config

    write_busi(tmp_path / "busi")
    repo = Path(__file__).resolve().parents[2]
    overrides = [f"data.root={tmp_path / 'busi'}", f"data.image_size={BUSI_SIZE}", "model.pretrained=false"]
    cfg = load_config(repo / "configs" / "busi_full.yaml", overrides)
    assert cfg.postprocess.min_component_size == "auto"
    raw = evaluate_split(_Speck(), cfg, split="test", min_component_size=0, progress=False)
    normal = raw.summary["empty_target"]["n"]
    assert normal >= 1 and raw.summary["empty_target"]["false_positives"] == normal  # a speck on every normal scan
    cleaned = evaluate_split(_Speck(), cfg, split="test", progress=False)
    # on validation, removing the 9 px speck turns every normal scan from 0 to 1: the smallest size above 9 wins
    assert cleaned.summary["min_component_size"] == 10
    assert cleaned.summary["empty_target"]["false_positives"] == 0
    assert cleaned.summary["dice_all"] > raw.summary["dice_all"]
