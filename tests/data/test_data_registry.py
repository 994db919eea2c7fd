"""Tests of what the dataset registry knows without reading data: class names, sized like the classes."""

from __future__ import annotations

import pytest

from medpeft.data import DATASETS, dataset_info, register_dataset


def test_every_dataset_names_its_classes_background_first() -> None:
    for name in DATASETS:
        info = dataset_info(name)
        assert len(info.class_names) == info.num_classes and info.class_names[0] == "background", name
    assert dataset_info("acdc").class_names == ("background", "RV", "MYO", "LV")
    # TransUNet's label ids 1..8
    assert dataset_info("synapse").class_names == (
        "background", "aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas", "spleen", "stomach",
    )  # fmt: skip
    for name in ("isic2018", "busi", "demo"):
        assert dataset_info(name).class_names == ("background", "lesion")


def test_class_names_must_match_num_classes() -> None:
    with pytest.raises(ValueError, match="2 class_names"):
        register_dataset("test_mismatched_names", num_classes=3, in_channels=1, class_names=("background", "x"))
    assert "test_mismatched_names" not in DATASETS
