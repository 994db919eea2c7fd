"""Tests of SegmentationDataModule on the generated demo set (300 images, generated once per module)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medpeft.data import SegmentationDataModule, SplitMismatchError
from medpeft.data.transforms import CaseFileError


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data") / "demo"


def _datamodule(root: Path, **kwargs) -> SegmentationDataModule:
    options = {"dataset": "demo", "root": str(root), "image_size": 64, "batch_size": 8, "num_workers": 0, "seed": 0}
    return SegmentationDataModule(**(options | kwargs))


def test_init_does_no_io_and_knows_the_task(demo_root: Path) -> None:
    dm = _datamodule(demo_root)
    assert not demo_root.exists()
    assert (dm.num_classes, dm.in_channels) == (2, 3)
    with pytest.raises(RuntimeError, match="setup"):
        _ = dm.split
    with pytest.raises(ValueError, match="registered"):
        SegmentationDataModule(dataset="nope")


def test_batches_have_documented_shapes(demo_root: Path) -> None:
    dm = _datamodule(demo_root)
    dm.prepare_data()
    dm.setup("fit")
    assert sum(len(ids) for ids in dm.split.values()) == 300
    assert [len(dm.split[name]) for name in ("val", "test")] == [45, 45]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch["image"].shape == (8, 3, 64, 64) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (8, 1, 64, 64) and batch["label"].dtype == torch.int64
        assert set(batch["label"].unique().tolist()) == {0, 1}
        assert len(batch["name"]) == 8 and all(isinstance(n, str) for n in batch["name"])


def test_split_is_disjoint_reproducible_and_saved(demo_root: Path, tmp_path: Path) -> None:
    dm = _datamodule(demo_root)
    dm.setup("fit")
    split = dm.split
    train, val, test = (set(split[name]) for name in ("train", "val", "test"))
    assert not train & val and not test & (train | val)
    other = _datamodule(demo_root)
    other.setup("test")
    assert other.split == split
    path = dm.save_split(tmp_path / "split.json")
    assert json.loads(path.read_text()) == split


@pytest.mark.parametrize("cache_rate", [0.0, 1.0])
def test_label_budget_is_a_nested_seeded_subset_of_train(demo_root: Path, cache_rate: float) -> None:
    full = _datamodule(demo_root)
    full.setup("fit")
    small, large = (_datamodule(demo_root, train_cases=n, cache_rate=cache_rate) for n in (20, 60))
    for dm in (small, large):
        dm.setup("fit")
        assert dm.split["val"] == full.split["val"] and dm.split["test"] == full.split["test"]
    assert len(small.split["train"]) == 20 and len(large.split["train"]) == 60
    assert set(small.split["train"]) < set(large.split["train"]) < set(full.split["train"])
    names = [name for batch in small.train_dataloader() for name in batch["name"]]
    assert sorted(names) == sorted(small.split["train"])  # the loader serves exactly the budgeted cases
    too_many = _datamodule(demo_root, train_cases=len(full.split["train"]) + 1)
    with pytest.raises(ValueError, match="train_cases is 211, but the training split has 210 cases"):
        too_many.setup("fit")
    with pytest.raises(ValueError, match="train_cases must be >= 1"):
        _datamodule(demo_root, train_cases=0)


def test_training_order_and_augmentation_are_seeded(demo_root: Path) -> None:
    def first_batch(seed: int) -> dict:
        dm = _datamodule(demo_root, seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert a["name"] == b["name"] and torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["name"] != c["name"]
    # Validation batches come in a fixed, sorted order and are never augmented.
    dm = _datamodule(demo_root)
    dm.setup("validate")
    v1, v2 = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert v1["name"] == sorted(v1["name"]) and torch.equal(v1["image"], v2["image"])


@pytest.mark.parametrize("cache_rate", [0.0, 1.0])
def test_broken_case_named_or_skipped_and_counted(tmp_path: Path, cache_rate: float) -> None:
    root = tmp_path / "demo"
    _datamodule(root).prepare_data()
    broken = root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000007.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated download

    with pytest.raises(CaseFileError) as info:  # default: the first read names the file
        dm = _datamodule(root, cache_rate=cache_rate)
        dm.setup("fit")
        for name in ("train", "val", "test"):
            for index in range(len(dm.datasets[name])):
                dm.datasets[name][index]
    assert info.value.path == str(broken)

    dm = _datamodule(root, cache_rate=cache_rate, bad_cases="skip")
    dm.setup("fit")
    assert [(case["case"], case["file"]) for case in dm.skipped_cases] == [("ISIC_0000007", str(broken))]
    assert "cannot read image" in dm.skipped_cases[0]["problem"]
    cases = [case for ids in dm.split.values() for case in ids]
    assert len(cases) == 299 and "ISIC_0000007" not in cases
    for name in ("train", "val", "test"):  # every case left in is readable
        for index in range(len(dm.datasets[name])):
            dm.datasets[name][index]


def test_a_recorded_split_is_kept_exactly_and_checked(demo_root: Path) -> None:
    full = _datamodule(demo_root)
    full.setup("fit")
    recorded = {name: ids[::2] for name, ids in full.split.items()}  # as if every other case had been skipped
    dm = _datamodule(demo_root, recorded_split=recorded, train_cases=5)  # the record's budget wins: no new draw
    dm.setup("fit")
    assert dm.split == recorded
    moved = {**recorded, "test": [*recorded["test"], full.split["train"][0]]}  # a case now in another split
    with pytest.raises(SplitMismatchError, match=r"1 recorded test case\(s\) are not in the test split"):
        _datamodule(demo_root, recorded_split=moved).setup("fit")
