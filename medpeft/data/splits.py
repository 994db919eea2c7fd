"""Deterministic train / val / test splits of case ids.

A split is a plain ``{"train": [...], "val": [...], "test": [...]}`` dict of sorted case ids. It depends only on
the set of ids, the fractions, the seed and the optional grouping, never on file-system order, so the same data and
seed give the same split on every machine. The test split is held out: it is never used for training or for model
selection (checkpoint choice, early stopping, hyper-parameter search), which only look at ``val``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from medpeft.io import write_text_atomic

__all__ = ["SPLIT_NAMES", "save_split_json", "split_cases"]

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


def _target_count(fraction: float, n_cases: int) -> int:
    """Number of cases a split should get: rounded, but at least one when its fraction is positive."""
    if fraction <= 0.0:
        return 0
    return max(1, round(fraction * n_cases))


def split_cases(
    ids: Iterable[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: Mapping[str, str] | None = None,
    strata: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Split case ids into train / val / test, deterministically, group-aware and optionally stratified.

    The ids are sorted, then grouped (each id is its own group unless ``groups`` says otherwise), and the sorted
    groups are shuffled with ``numpy.random.Generator(PCG64(seed)).permutation``. Whole groups are dealt to ``test``
    until it holds about ``test_fraction`` of the cases, then to ``val`` up to ``val_fraction``; the rest is
    ``train``. Keeping a group together is what prevents leakage through near-duplicate images (BUSI) or through
    several images of one patient. A split with a positive fraction gets at least one group as long as enough
    groups remain for every non-empty split, and ``train`` is never emptied to fill the others.

    With ``strata`` (e.g. the diagnosis class of each case), the dealing above runs separately within each stratum,
    in sorted stratum order with one shared generator, so every split keeps about the class ratios of the whole
    set (each stratum's counts are rounded on their own, and the at-least-one rule applies per stratum). A group
    whose members fall in several strata belongs to its most common stratum (ties: the first in sorted order).
    Without ``strata`` the result is exactly that of a single stratum.

    Args:
        ids: Case ids; must be unique.
        val_fraction: Fraction of cases for validation, in ``[0, 1)``.
        test_fraction: Fraction of cases for the held-out test set, in ``[0, 1)``.
        seed: Seed of the permutation.
        groups: Optional mapping ``id -> group key``; ids that share a key always land in the same split. Ids
            missing from the mapping form their own group.
        strata: Optional mapping ``id -> stratum key``; ids missing from the mapping share one extra stratum.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted; together they hold every id once.

    Raises:
        ValueError: If the ids are not unique, or the fractions are negative or sum to 1 or more.
    """
    ids = sorted(ids)
    if len(set(ids)) != len(ids):
        duplicates = sorted(case_id for case_id, count in Counter(ids).items() if count > 1)
        raise ValueError(f"case ids must be unique, got duplicates {duplicates[:5]}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"need val_fraction >= 0, test_fraction >= 0 and val_fraction + test_fraction < 1, "
            f"got val_fraction={val_fraction} and test_fraction={test_fraction}"
        )

    members: dict[str, list[str]] = {}
    for case_id in ids:
        # The "id:" / "group:" prefixes keep a lone id from colliding with a group key of the same spelling.
        key = f"group:{groups[case_id]}" if groups is not None and case_id in groups else f"id:{case_id}"
        members.setdefault(key, []).append(case_id)
    by_stratum: dict[tuple[int, str], list[list[str]]] = {}
    for key in sorted(members):
        # (0, key) for listed strata and (1, "") for unlisted ids: the extra stratum never collides with a key.
        counts = Counter((0, strata[c]) if strata is not None and c in strata else (1, "") for c in members[key])
        stratum = min(counts, key=lambda s: (-counts[s], s))
        by_stratum.setdefault(stratum, []).append(members[key])

    rng = np.random.default_rng(seed)
    split: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for stratum in sorted(by_stratum):
        for name, stratum_ids in _deal(by_stratum[stratum], rng, val_fraction, test_fraction).items():
            split[name].extend(stratum_ids)
    return {name: sorted(split[name]) for name in SPLIT_NAMES}


def _deal(
    units: list[list[str]], rng: np.random.Generator, val_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
    """Shuffle groups of ids and deal whole groups to test, then val, then train (see :func:`split_cases`)."""
    n_cases = sum(len(unit) for unit in units)
    order = rng.permutation(len(units))
    targets = {"test": _target_count(test_fraction, n_cases), "val": _target_count(val_fraction, n_cases)}
    split: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    position = 0
    for name, later_needed in (("test", 1 + (targets["val"] > 0)), ("val", 1)):
        # Stop early enough that every split still to be filled (val, then train) can get a group.
        while len(split[name]) < targets[name] and position < len(units) - later_needed:
            split[name].extend(units[order[position]])
            position += 1
    for index in order[position:]:
        split["train"].extend(units[index])
    return split


def save_split_json(split: Mapping[str, list[str]], path: str | os.PathLike[str]) -> Path:
    """Write a split to JSON atomically.

    The JSON goes to a temporary file in the destination folder first and is then moved over ``path`` with
    ``os.replace``, so a crash mid-write never leaves a truncated split file behind.

    Args:
        split: ``{"train": [...], "val": [...], "test": [...]}``.
        path: Destination file; missing parent folders are created.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {name: list(split[name]) for name in SPLIT_NAMES if name in split}
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    return path
