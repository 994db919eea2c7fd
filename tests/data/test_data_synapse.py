"""Synapse reader: tiny fixtures in the TransUNet layout (npz slices + h5 volumes, optional lists) and raw BTCV NIfTI."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from medpeft.data.registry import DatasetNotFoundError, dataset_info
from medpeft.data.synapse import (
    BTCV_TO_SYNAPSE,
    TRANSUNET_TEST_CASES,
    build_synapse,
    build_synapse_volumes,
    list_synapse_volumes,
    synapse_split,
)
from medpeft.data.volumes import VOLUME_DATASETS, build_volume_dataset

TRAIN_DEPTHS = {"case0005": 4, "case0006": 3, "case0007": 5, "case0009": 2}  # train_npz slices per case
TEST_DEPTHS = {"case0001": 3, "case0002": 2}  # test_vol_h5 volumes
HW = (16, 12)


def _slice(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = rng.random(HW).astype(np.float32)  # TransUNet files are already in [0, 1]
    label = rng.integers(0, 9, size=HW).astype(np.float32)  # TransUNet stores labels as float
    return image, label


def make_transunet(base: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write train_npz/ and test_vol_h5/; returns ``{case: (image [D, H, W], label [D, H, W])}`` as written."""
    rng = np.random.default_rng(seed)
    (base / "train_npz").mkdir(parents=True)
    (base / "test_vol_h5").mkdir()
    written = {}
    for case, depth in TRAIN_DEPTHS.items():
        slices = [_slice(rng) for _ in range(depth)]
        for z, (image, label) in enumerate(slices):
            np.savez(base / "train_npz" / f"{case}_slice{z:03d}.npz", image=image, label=label)
        written[case] = (np.stack([s[0] for s in slices]), np.stack([s[1] for s in slices]))
    for case, depth in TEST_DEPTHS.items():
        image = np.stack([_slice(rng)[0] for _ in range(depth)])
        label = np.stack([_slice(rng)[1] for _ in range(depth)])
        with h5py.File(base / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"], f["label"] = image, label
        written[case] = (image, label)
    return written


@pytest.fixture(scope="module")
def transunet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synapse")
    return root, make_transunet(root / "data" / "Synapse")  # root is two levels above the data, as in TransUNet


BTCV_NUMBERS = (1, 2, 5, 6, 7, 8, 10)  # 1, 2 and 8 are TransUNet test cases
BTCV_SHAPE = (12, 10, 3)  # (X, Y, Z)
BTCV_ZOOMS = (0.8, 0.7, 3.0)


def _write_nifti(path: Path, data: np.ndarray) -> None:
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_zooms(BTCV_ZOOMS)
    nib.save(img, path)


def make_btcv(base: Path, numbers: tuple[int, ...] = BTCV_NUMBERS) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Write img/ and label/ (raw HU int16, BTCV labels 0-13); returns ``{number: (image, label)}`` (X, Y, Z)."""
    rng = np.random.default_rng(0)
    (base / "img").mkdir(parents=True)
    (base / "label").mkdir()
    written = {}
    for number in numbers:
        image = rng.integers(-1024, 1500, size=BTCV_SHAPE).astype(np.int16)
        label = rng.integers(0, 14, size=BTCV_SHAPE).astype(np.uint8)
        _write_nifti(base / "img" / f"img{number:04d}.nii.gz", image)
        _write_nifti(base / "label" / f"label{number:04d}.nii.gz", label)
        written[number] = (image, label)
    return written


@pytest.fixture(scope="module")
def btcv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("btcv")
    return root, make_btcv(root / "RawData" / "Training")


def _cases(names: list[str]) -> set[str]:
    return {name.split("_")[0] for name in names}


def test_registered() -> None:
    info = dataset_info("synapse")
    assert (info.num_classes, info.in_channels) == (9, 1)
    assert "synapse" in VOLUME_DATASETS
    with pytest.raises(ValueError, match="available: .*'synapse'"):
        build_volume_dataset("no_such_set", "anywhere")


def test_btcv_to_transunet_mapping_is_the_documented_one() -> None:
    # BTCV: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 6 liver, 7 stomach, 8 aorta, 11 pancreas.
    # TransUNet: 1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas, 7 spleen, 8 stomach.
    assert BTCV_TO_SYNAPSE == {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}


def test_transunet_official_split_and_counts(transunet: tuple[Path, dict]) -> None:
    root, _ = transunet
    split = synapse_split(root, seed=0, val_fraction=0.25)
    names = {name: [case.name for case in cases] for name, cases in split.items()}
    assert names["test"] == sorted(TEST_DEPTHS)  # test = the test_vol_h5 cases, whatever test_fraction says
    assert len(names["val"]) == 1 and set(names["train"]) | set(names["val"]) == set(TRAIN_DEPTHS)
    again = synapse_split(root, seed=0, val_fraction=0.25)
    assert {name: [case.name for case in cases] for name, cases in again.items()} == names  # deterministic

    slices = {name: build_synapse(root, split=name, image_size=8, seed=0, val_fraction=0.25) for name in names}
    assert len(slices["train"]) + len(slices["val"]) == sum(TRAIN_DEPTHS.values())
    assert len(slices["test"]) == sum(TEST_DEPTHS.values())
    # Case-level: no case has slices in two splits, and the slice splits match the volume splits.
    for name, cases in names.items():
        assert _cases(slices[name].case_ids) == set(cases)
    assert slices["train"].case_ids[0].endswith("_slice000")


def test_transunet_items_and_volumes(transunet: tuple[Path, dict]) -> None:
    root, written = transunet
    item = build_synapse(root, split="test", image_size=8, augment=True)[0]
    assert item["image"].shape == (1, 8, 8) and str(item["image"].dtype) == "torch.float32"
    assert item["label"].shape == (1, 8, 8) and str(item["label"].dtype) == "torch.int64"
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert set(item["label"].unique().tolist()) <= set(range(9))

    for volume in build_synapse_volumes(root, split="test"):
        image, label = written[volume["name"]]
        assert volume["spacing"] == (1.0, 1.0, 1.0) and volume["spacing_unit"] == "voxel"  # TransUNet stores none
        np.testing.assert_array_equal(volume["image"].numpy(), image)  # already [0, 1]: unchanged
        np.testing.assert_array_equal(volume["label"].numpy(), label.astype(np.int64))
    # Training cases can be evaluated as volumes too: their npz slices are stacked in slice order.
    volumes = build_synapse_volumes(root, split="train", val_fraction=0.0, spacing=(3.0, 0.8, 0.8))
    volume = volumes[volumes.case_ids.index("case0007")]
    assert volume["image"].shape == (5, *HW) and volume["spacing"] == (3.0, 0.8, 0.8)
    np.testing.assert_array_equal(volume["label"].numpy(), written["case0007"][1])


def test_transunet_without_test_volumes_draws_test_cases(tmp_path: Path) -> None:
    make_transunet(tmp_path)
    for path in (tmp_path / "test_vol_h5").iterdir():
        path.unlink()
    split = synapse_split(tmp_path, seed=0, val_fraction=0.25, test_fraction=0.25)
    names = {name: {case.name for case in cases} for name, cases in split.items()}
    assert [len(names[n]) for n in ("train", "val", "test")] == [2, 1, 1]
    assert set().union(*names.values()) == set(TRAIN_DEPTHS)


def test_transunet_lists_restrict_and_check(tmp_path: Path) -> None:
    make_transunet(tmp_path / "data" / "Synapse")
    lists = tmp_path / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"case0005_slice{z:03d}\n" for z in range(4)) + "case0006_slice000\n")
    (lists / "test_vol.txt").write_text("case0002\n")
    assert [case.name for case in list_synapse_volumes(tmp_path)] == ["case0005", "case0006", "case0002"]
    (lists / "test_vol.txt").write_text("case0002\ncase0003\n")
    with pytest.raises(ValueError, match=r"case0003\.npy\.h5: listed in .*test_vol\.txt but missing"):
        list_synapse_volumes(tmp_path)


def test_btcv_window_mapping_spacing_and_split(btcv: tuple[Path, dict]) -> None:
    root, written = btcv
    volumes = build_synapse_volumes(root, split="test")
    assert volumes.case_ids == ["case0001", "case0002", "case0008"]  # TransUNet's test cases among those present
    for volume in volumes:
        image, label = written[int(volume["name"][4:])]
        assert volume["image"].shape == (3, 10, 12) and volume["spacing"] == (3.0, 0.7, 0.8)
        expected = (np.clip(image, -125, 275).astype(np.float32) + 125) / 400  # HU window [-125, 275] -> [0, 1]
        np.testing.assert_allclose(volume["image"].numpy(), expected.transpose(2, 1, 0), atol=1e-6)
        mapped = np.vectorize(lambda v: BTCV_TO_SYNAPSE.get(int(v), 0))(label)  # 5, 9, 10, 12, 13 -> 0
        np.testing.assert_array_equal(volume["label"].numpy(), mapped.transpose(2, 1, 0))
        assert set(volume["label"].unique().tolist()) <= set(range(9))

    names = {n: {c.name for c in cases} for n, cases in synapse_split(root, val_fraction=0.25).items()}
    assert names["test"] == {"case0001", "case0002", "case0008"} and len(names["val"]) == 1
    seeded = {n: {c.name for c in cases} for n, cases in synapse_split(root, official_test=False).items()}
    assert all(a.isdisjoint(b) for a in seeded.values() for b in seeded.values() if a is not b)
    assert sum(len(s) for s in seeded.values()) == len(BTCV_NUMBERS)
    assert set(TRANSUNET_TEST_CASES) >= names["test"]

    ds = build_synapse(root, split="train", image_size=8, val_fraction=0.25)
    assert len(ds) == 3 * BTCV_SHAPE[2] and ds.case_ids[0].endswith("_slice000")
    assert set(ds[0]["label"].unique().tolist()) <= set(range(9))


# ----------------------------------------------------------------------------------------------------------- errors


def test_missing_root_names_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        build_synapse(tmp_path / "nowhere")
    message = str(info.value)
    assert "nowhere" in message and "train_npz" in message and "img<NNNN>.nii.gz" in message
    assert "https://www.synapse.org/#!Synapse:syn3193805" in message and "TransUNet" in message
    assert "data.root" in message
    with pytest.raises(DatasetNotFoundError, match="no train_npz"):
        build_synapse_volumes(tmp_path)


def test_btcv_image_without_label_names_the_file(tmp_path: Path) -> None:
    make_btcv(tmp_path, numbers=(1, 2))
    (tmp_path / "label" / "label0002.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"img0002\.nii\.gz: image has no label; expected .*label0002\.nii\.gz"):
        list_synapse_volumes(tmp_path)
    (tmp_path / "img" / "img0002.nii.gz").unlink()
    (tmp_path / "img" / "img0001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"label0001\.nii\.gz: label has no image; expected .*img0001\.nii\.gz"):
        list_synapse_volumes(tmp_path)


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    make_transunet(tmp_path)
    bad = tmp_path / "train_npz" / "case0006_slice001.npz"
    image, label = _slice(np.random.default_rng(0))
    np.savez(bad, image=image, label=np.full(HW, 9, np.float32))
    volumes = build_synapse_volumes(tmp_path, split="train", val_fraction=0.0)
    with pytest.raises(ValueError, match=r"case0006_slice001\.npz: label values must be class ids in \{0, ..., 8\}"):
        volumes[volumes.case_ids.index("case0006")]

    np.savez(bad, image=image * 400 - 125, label=label)  # raw HU in a TransUNet file
    with pytest.raises(ValueError, match=r"case0006_slice001\.npz: expected TransUNet-preprocessed intensities"):
        volumes[volumes.case_ids.index("case0006")]

    bad.write_bytes(bad.read_bytes()[:100])  # truncated download
    with pytest.raises(ValueError, match=r"case0006_slice001\.npz: cannot read npz slice"):
        volumes[volumes.case_ids.index("case0006")]

    with h5py.File(tmp_path / "test_vol_h5" / "case0002.npy.h5", "w") as f:
        f["image"] = np.zeros((2, *HW), np.float32)
    with pytest.raises(ValueError, match=r"case0002\.npy\.h5: h5 file needs datasets 'image' and 'label'"):
        list_synapse_volumes(tmp_path)


def test_missing_slice_and_train_test_overlap_are_reported(tmp_path: Path) -> None:
    make_transunet(tmp_path)
    (tmp_path / "train_npz" / "case0007_slice002.npz").unlink()
    with pytest.raises(ValueError, match=r"case0007_slice002\.npz: missing"):
        list_synapse_volumes(tmp_path)
    (tmp_path / "train_npz" / "case0007_slice003.npz").rename(tmp_path / "train_npz" / "case0007_slice002.npz")
    (tmp_path / "train_npz" / "case0007_slice004.npz").rename(tmp_path / "train_npz" / "case0007_slice003.npz")
    (tmp_path / "train_npz" / "case0005_slice000.npz").rename(tmp_path / "train_npz" / "case0001_slice000.npz")
    with pytest.raises(ValueError, match="case0001.*would leak"):
        list_synapse_volumes(tmp_path)
