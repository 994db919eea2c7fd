"""Tests of medpeft.data.splits: deterministic, disjoint, group-aware splits and atomic JSON."""

from __future__ import annotations

import json

import pytest

from medpeft.data.splits import save_split_json, split_cases

IDS = [f"case_{i:03d}" for i in range(40)]


def test_split_is_deterministic_disjoint_and_covering() -> None:
    first = split_cases(IDS, val_fraction=0.2, test_fraction=0.1, seed=3)
    # Input order must not matter: ids are sorted before shuffling.
    second = split_cases(list(reversed(IDS)), val_fraction=0.2, test_fraction=0.1, seed=3)
    assert first == second
    assert (len(first["train"]), len(first["val"]), len(first["test"])) == (28, 8, 4)
    assert sorted(first["train"] + first["val"] + first["test"]) == IDS
    assert all(first[name] == sorted(first[name]) for name in first)
    assert split_cases(IDS, 0.2, 0.1, seed=4) != first


def test_groups_stay_together() -> None:
    groups = {case_id: f"patient_{i // 4}" for i, case_id in enumerate(IDS)}  # 10 patients x 4 images
    for seed in range(5):
        split = split_cases(IDS, val_fraction=0.2, test_fraction=0.2, seed=seed, groups=groups)
        where = {case_id: name for name, ids in split.items() for case_id in ids}
        for patient in set(groups.values()):
            members = [case_id for case_id, g in groups.items() if g == patient]
            assert len({where[m] for m in members}) == 1, f"{patient} split across {[where[m] for m in members]}"
        assert all(len(split[name]) == 8 for name in ("val", "test"))


def test_small_sets_keep_every_split_non_empty() -> None:
    split = split_cases(["a", "b", "c"], val_fraction=0.1, test_fraction=0.1, seed=0)
    assert all(len(ids) == 1 for ids in split.values())
    # Two cases cannot fill three splits: train keeps one and val (filled last, just before train) the other.
    split = split_cases(["a", "b"], val_fraction=0.1, test_fraction=0.1, seed=0)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (1, 1, 0)
    assert split_cases(["a", "b"], 0.0, 0.0, seed=0) == {"train": ["a", "b"], "val": [], "test": []}


@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(-0.1, 0.1), (0.5, 0.5), (0.7, 0.4)])
def test_bad_fractions_raise(val_fraction: float, test_fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(IDS, val_fraction, test_fraction, seed=0)


def test_duplicate_ids_raise() -> None:
    with pytest.raises(ValueError, match="case_001"):
        split_cases(IDS + ["case_001"], 0.1, 0.1, seed=0)


def test_save_split_json_round_trips_without_leftovers(tmp_path) -> None:
    split = split_cases(IDS, 0.15, 0.15, seed=0)
    path = save_split_json(split, tmp_path / "run" / "split.json")
    assert json.loads(path.read_text()) == split
    save_split_json({"train": ["x"], "val": [], "test": []}, path)  # overwrite in place
    assert json.loads(path.read_text())["train"] == ["x"]
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]
