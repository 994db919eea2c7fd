"""ACDC reader: tiny fixtures in the 2017 and 2023 layouts, plus the shared real samples / data where present.

Fixture volumes are (X, Y, Z) = (20, 24, 4) with zooms (1.5, 1.25, 10) and the real data's header quirk (affine
diag(-1, -1, 1) without voxel sizes), so spacing must come from the header and be reordered to (sz, sy, sx) =
(10, 1.25, 1.5) with the array transposed to [D, H, W] = (4, 24, 20).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from builders import ACDC_FIXTURE_GROUPS as FIXTURE_GROUPS
from builders import ACDC_GROUPS as GROUPS
from builders import ACDC_SHAPE as SHAPE
from builders import make_acdc_patient as make_patient
from builders import write_acdc_nifti as _write_nifti

from medpeft.data.acdc import acdc_split, build_acdc, build_acdc_volumes, list_acdc_volumes
from medpeft.data.registry import DatasetNotFoundError, dataset_info
from medpeft.data.volumes import VOLUME_DATASETS, build_volume_dataset, percentile_normalise

SHARED = Path(__file__).resolve().parents[3] / "shared"


@pytest.fixture(scope="module")
def acdc2017(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """2017 layout: training/ with 15 labelled patients (5 in each of 3 groups; patient004 has ED 4 / ES 11) and
    testing/ with 2 unlabelled patients."""
    root = tmp_path_factory.mktemp("acdc2017")
    rng = np.random.default_rng(0)
    written = {}
    for number in range(1, 16):
        ed, es = (4, 11) if number == 4 else (1, 12)
        written[number] = make_patient(root / "training", number, rng, ed=ed, es=es)
    for number in (101, 102):
        make_patient(root / "testing", number, rng, labelled=False)
    return root, written


@pytest.fixture(scope="module")
def acdc2023(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2023 layout: database/training with 10 patients and database/testing with 3 labelled patients."""
    root = tmp_path_factory.mktemp("acdc2023")
    rng = np.random.default_rng(1)
    for number in range(1, 11):
        make_patient(root / "database" / "training", number, rng)
    for number in (101, 102, 103):
        make_patient(root / "database" / "testing", number, rng)
    return root


def _patients(names: list[str]) -> set[str]:
    return {name.split("_")[0] for name in names}


ALL = {"val_fraction": 0.0, "test_fraction": 0.0}


def test_registered() -> None:
    info = dataset_info("acdc")
    assert (info.num_classes, info.in_channels) == (4, 1)
    assert "acdc" in VOLUME_DATASETS


def test_2017_layout_counts_and_names(acdc2017: tuple[Path, dict]) -> None:
    root, _ = acdc2017
    volumes = list_acdc_volumes(root)
    # 15 labelled patients x (ED, ES); the unlabelled testing/ patients, frame05 and the 4D files are skipped.
    assert len(volumes) == 30 and all(v.official_split is None for v in volumes)
    assert [v.name for v in volumes[:2]] == ["patient001_ED", "patient001_ES"]
    ds = build_acdc(root, split="train", image_size=32, **ALL)
    assert len(ds) == 30 * SHAPE[2]
    assert ds.case_ids[:2] == ["patient001_ED_z00", "patient001_ED_z01"]
    assert ds.case_ids[-1] == "patient015_ES_z03"


def test_ed_es_frames_come_from_info_cfg(acdc2017: tuple[Path, dict]) -> None:
    root, written = acdc2017
    volumes = {v["name"]: v for v in build_acdc_volumes(root, split="train", **ALL)}
    # patient004 has ED 4 and ES 11 (as patient090 in the real data); frame numbers pick the files.
    for phase, frame in (("ED", 4), ("ES", 11)):
        label = written[4][frame][1].transpose(2, 1, 0)  # (X, Y, Z) -> [D, H, W]
        np.testing.assert_array_equal(volumes[f"patient004_{phase}"]["label"].numpy(), label)


def test_volume_orientation_spacing_and_normalisation(acdc2017: tuple[Path, dict]) -> None:
    root, written = acdc2017
    volumes = build_acdc_volumes(root, split="train", **ALL)
    for number in (1, 2, 3):  # float32, int16, uint8 patients
        volume = volumes[volumes.case_ids.index(f"patient{number:03d}_ES")]
        image, label = written[number][12]
        assert volume["image"].shape == (4, 24, 20) and volume["label"].shape == (4, 24, 20)
        assert volume["spacing"] == (10.0, 1.25, 1.5)
        np.testing.assert_array_equal(volume["label"].numpy(), label.transpose(2, 1, 0))
        assert str(volume["image"].dtype) == "torch.float32" and str(volume["label"].dtype) == "torch.int64"
        # Per-volume 0.5 / 99.5 percentile clip to [0, 1]: the hot outlier does not squeeze the range.
        assert volume["image"].min() == 0.0 and volume["image"].max() == 1.0
        expected = percentile_normalise(image.transpose(2, 1, 0))
        np.testing.assert_allclose(volume["image"].numpy(), expected, atol=1e-6)
        assert float(volume["image"].median()) > 0.3


def test_slice_items_plain_and_augmented(acdc2017: tuple[Path, dict]) -> None:
    root, _ = acdc2017
    for augment in (False, True):
        ds = build_acdc(root, split="train", image_size=32, augment=augment, seed=3, **ALL)
        items = [ds[i] for i in (0, 5, 17)]
        for item in items:
            assert item["image"].shape == (1, 32, 32) and str(item["image"].dtype) == "torch.float32"
            assert item["label"].shape == (1, 32, 32) and str(item["label"].dtype) == "torch.int64"
            assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
            assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3}
        again = build_acdc(root, split="train", image_size=32, augment=augment, seed=3, **ALL)
        for index, item in zip((0, 5, 17), items):  # seeded: the same draws on a fresh dataset
            other = again[index]
            assert (other["image"] == item["image"]).all() and (other["label"] == item["label"]).all(), (
                augment,
                index,
            )
    assert set(ds[0].keys()) == {"image", "label", "name"}


def _split_names(root: Path, **kwargs: object) -> dict[str, list[str]]:
    return {name: [v.name for v in cases] for name, cases in acdc_split(root, **kwargs).items()}


def test_patient_level_split_is_disjoint_stratified_and_deterministic(acdc2017: tuple[Path, dict]) -> None:
    root, _ = acdc2017
    split = _split_names(root, seed=0, val_fraction=0.2, test_fraction=0.2)
    patients = {name: _patients(names) for name, names in split.items()}
    assert patients["train"].isdisjoint(patients["val"]) and patients["train"].isdisjoint(patients["test"])
    assert patients["val"].isdisjoint(patients["test"])
    assert sum(len(p) for p in patients.values()) == 15
    for names in split.values():  # ED and ES of a patient always together
        assert all(f"{p}_ED" in names and f"{p}_ES" in names for p in _patients(names))
    # Stratified: 5 patients in each of 3 groups -> one of each group in val and in test.
    assert len(patients["val"]) == len(patients["test"]) == 3
    groups = {p: FIXTURE_GROUPS[int(p[-3:]) % 3] for p in patients["train"] | patients["val"] | patients["test"]}
    assert {groups[p] for p in patients["val"]} == {groups[p] for p in patients["test"]} == set(FIXTURE_GROUPS)
    assert _split_names(root, seed=0, val_fraction=0.2, test_fraction=0.2) == split
    assert _split_names(root, seed=1, val_fraction=0.2, test_fraction=0.2) != split

    # Slice datasets and volume datasets agree on the split, so evaluation sees the held-out patients.
    for name in ("train", "val", "test"):
        slices = build_acdc(root, split=name, image_size=16, seed=0, val_fraction=0.2, test_fraction=0.2)
        volumes = build_volume_dataset("acdc", root, name, seed=0, val_fraction=0.2, test_fraction=0.2)
        assert _patients(slices.case_ids) == _patients(volumes.case_ids) == patients[name]

    unstratified = acdc_split(root, seed=0, val_fraction=0.2, test_fraction=0.2, stratify=False)
    assert len(_patients([v.name for v in unstratified["test"]])) == 3  # round(0.2 * 30 volumes) / 2
    # Too few patients per group for these fractions (5 < 1 / 0.15): unstratified, with a warning.
    with pytest.warns(UserWarning, match="not stratifying"):
        small = _split_names(root, seed=0, val_fraction=0.15, test_fraction=0.15)
    assert small == _split_names(root, seed=0, val_fraction=0.15, test_fraction=0.15, stratify=False)


def test_2023_layout_uses_labelled_testing_patients_as_test(acdc2023: Path) -> None:
    split = acdc_split(acdc2023, seed=0, val_fraction=0.2, test_fraction=0.5, stratify=False)
    assert _patients([v.name for v in split["test"]]) == {"patient101", "patient102", "patient103"}
    assert len(_patients([v.name for v in split["val"]])) == 2  # 0.2 of the 10 training patients
    # 3-4 training patients per group are too few to stratify a 0.2 fraction: the same split, with a warning.
    with pytest.warns(UserWarning, match="not stratifying"):
        stratified = acdc_split(acdc2023, seed=0, val_fraction=0.2, test_fraction=0.5)
    assert [v.name for v in stratified["val"]] == [v.name for v in split["val"]]
    # Pointing at database/training alone gives a seeded split of those patients instead.
    alone = acdc_split(acdc2023 / "database" / "training", seed=0, val_fraction=0.2, test_fraction=0.2, stratify=False)
    assert sum(len(_patients([v.name for v in cases])) for cases in alone.values()) == 10
    no_official = acdc_split(
        acdc2023, seed=0, val_fraction=0.2, test_fraction=0.2, stratify=False, official_test=False
    )
    assert sum(len(cases) for cases in no_official.values()) == 26


# ----------------------------------------------------------------------------------------------------------- errors


def test_missing_root_names_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        build_acdc(tmp_path / "nowhere")
    message = str(info.value)
    assert "nowhere" in message and "patient<NNN>_frame<YY>_gt.nii.gz" in message
    assert "https://www.creatis.insa-lyon.fr/Challenge/acdc/" in message and "data.root" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no patient"):
        build_acdc_volumes(tmp_path / "empty")


def _single_patient(tmp_path: Path, **kwargs: object) -> Path:
    make_patient(tmp_path / "training", 1, np.random.default_rng(0), **kwargs)
    return tmp_path / "training" / "patient001"


def test_label_without_image_and_image_without_label(tmp_path: Path) -> None:
    folder = _single_patient(tmp_path / "a")
    (folder / "patient001_frame12.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"patient001_frame12_gt\.nii\.gz: label has no image"):
        list_acdc_volumes(tmp_path / "a")
    folder = _single_patient(tmp_path / "b")
    (folder / "patient001_frame12_gt.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"patient001_frame12\.nii\.gz: ES frame 12 \(Info.cfg\) has no label"):
        list_acdc_volumes(tmp_path / "b")
    folder = _single_patient(tmp_path / "c")
    (folder / "Info.cfg").unlink()
    with pytest.raises(ValueError, match=r"Info\.cfg: missing"):
        list_acdc_volumes(tmp_path / "c")


def test_labels_out_of_range_name_the_file(tmp_path: Path) -> None:
    folder = _single_patient(tmp_path)
    label = np.zeros(SHAPE, np.uint8)
    label[3, 3, 1] = 5
    _write_nifti(folder / "patient001_frame01_gt.nii.gz", label)
    volumes = build_acdc_volumes(tmp_path, split="train", **ALL)
    with pytest.raises(
        ValueError, match=r"patient001_frame01_gt\.nii\.gz: label values must be class ids in \{0, ..., 3\}"
    ):
        volumes[0]
    ds = build_acdc(tmp_path, split="train", image_size=16, **ALL)
    with pytest.raises(ValueError, match=r"patient001_frame01_gt\.nii\.gz.*found \{0, 5\}"):
        ds[0]


def test_truncated_and_mismatched_files_name_the_file(tmp_path: Path) -> None:
    folder = _single_patient(tmp_path / "a")
    path = folder / "patient001_frame12.nii.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:600]))  # header intact, voxels cut short
    volumes = build_acdc_volumes(tmp_path / "a", split="train", **ALL)
    with pytest.raises(ValueError, match=r"patient001_frame12\.nii\.gz: cannot read NIfTI volume"):
        volumes[1]
    folder = _single_patient(tmp_path / "b")
    _write_nifti(folder / "patient001_frame01_gt.nii.gz", np.zeros((20, 24, 5), np.uint8))
    with pytest.raises(ValueError, match=r"patient001_frame01_gt\.nii\.gz: label shape .* differs from image"):
        list_acdc_volumes(tmp_path / "b")


# ------------------------------------------------------------------------------------------------ real samples / data


def test_real_sample_patient001() -> None:
    """../shared/real-samples/PROVENANCE.md section 3: frames 01 (ED) and 12 (ES), int16 (216, 256, 10) at
    1.5625 x 1.5625 x 10 mm, labels exactly {0, 1, 2, 3}."""
    root = SHARED / "real-samples" / "acdc"
    if not root.is_dir():
        pytest.skip(f"real ACDC samples not found at {root}")
    volumes = build_acdc_volumes(root, split="train", **ALL)
    assert volumes.case_ids == ["patient001_ED", "patient001_ES"]
    for volume in volumes:
        assert volume["image"].shape == (10, 256, 216)
        assert volume["spacing"] == (10.0, 1.5625, 1.5625)
        assert set(volume["label"].unique().tolist()) == {0, 1, 2, 3}
        assert volume["image"].min() == 0.0 and volume["image"].max() == 1.0
    ds = build_acdc(root, split="train", image_size=64, **ALL)
    assert len(ds) == 20 and ds.case_ids[12] == "patient001_ES_z02"
    middle = ds[15]  # a mid-ventricular ES slice shows all structures
    assert set(middle["label"].unique().tolist()) == {0, 1, 2, 3}


def test_real_data_100_patients_patient_level_split() -> None:
    """../shared/real-data/README.md section 2: 100 patients (20 per group), 200 volumes; patient090 has ED 4."""
    root = SHARED / "real-data" / "acdc"
    if not root.is_dir():
        pytest.skip(f"real ACDC data not found at {root}")
    volumes = list_acdc_volumes(root)
    assert len(volumes) == 200 and len(_patients([v.name for v in volumes])) == 100
    assert sorted({v.stratum for v in volumes}) == list(GROUPS)
    split = acdc_split(root, seed=0)
    patients = {name: _patients([v.name for v in cases]) for name, cases in split.items()}
    assert [len(patients[name]) for name in ("train", "val", "test")] == [70, 15, 15]
    assert patients["train"].isdisjoint(patients["val"] | patients["test"])
    assert patients["val"].isdisjoint(patients["test"])
    patient090 = build_acdc_volumes(root, split=next(n for n, p in patients.items() if "patient090" in p))
    ed = patient090[patient090.case_ids.index("patient090_ED")]
    assert set(ed["label"].unique().tolist()) == {0, 1, 2, 3} and ed["image"].max() == 1.0  # the uint8 patient


def test_label_budget_counts_patients_not_slices(acdc2017: tuple[Path, dict]) -> None:
    from medpeft.data import SegmentationDataModule

    root, _ = acdc2017

    def train_slices(budget: int | None) -> list[str]:
        dm = SegmentationDataModule("acdc", str(root), image_size=16, seed=0, train_cases=budget)
        dm.setup("fit")
        return dm.split["train"]

    everything, three = train_slices(None), train_slices(3)
    assert len(_patients(three)) == 3
    # every slice of both frames (ED, ES) of each budgeted patient, not 3 slices
    assert three == [name for name in everything if name.split("_")[0] in _patients(three)]
    assert len(three) == 3 * 2 * SHAPE[2]
    assert set(three) < set(train_slices(5))  # nested budgets
    with pytest.raises(ValueError, match=r"train_cases is 99, but the training split has \d+ patients"):
        train_slices(99)
