"""Aggregation of per-case rows: class means, overall mean of class means, stds, exclusion counts."""

from __future__ import annotations

import math
import statistics

import pytest

from medpeft.metrics import summarize_scores

NAN = math.nan


def _row(case: str, c: int, dice: float, hd95: float, gt: int = 10, pred: int = 10) -> dict:
    return {
        "case": case, "class": c, "dice": dice, "iou": dice, "hd95": hd95, "asd": hd95, "gt_voxels": gt,
        "pred_voxels": pred,
    }  # fmt: skip


def test_summary_hand_computed() -> None:
    rows = [
        _row("a", 1, 0.8, 2.0), _row("a", 2, 0.6, NAN),
        _row("b", 1, 0.4, 4.0), _row("b", 2, NAN, NAN, gt=0, pred=0),
        _row("c", 1, 1.0, 6.0), _row("c", 2, 0.2, 3.0),
    ]  # fmt: skip
    summary = summarize_scores(rows, "symmetric", "mm", ["background", "RV", "LV"])
    dice1, dice2 = summary["per_class"]["1"]["dice"], summary["per_class"]["2"]["dice"]
    assert summary["per_class"]["1"]["name"] == "RV" and summary["n_cases"] == 3
    assert dice1["mean"] == pytest.approx(2.2 / 3) and dice1["n"] == 3 and dice1["n_excluded"] == 0
    assert dice1["std"] == pytest.approx(statistics.stdev([0.8, 0.4, 1.0]))
    assert dice2["mean"] == pytest.approx(0.4) and dice2["n_excluded"] == 1
    overall = summary["overall"]["dice"]
    assert overall["mean"] == pytest.approx((2.2 / 3 + 0.4) / 2)  # mean of the class means
    assert overall["std"] == pytest.approx(statistics.stdev([0.7, 0.4, 0.6]))  # over per-case means
    assert overall["n_excluded"] == 1 and overall["n_cases"] == 3
    hd = summary["overall"]["hd95"]
    assert hd["mean"] == pytest.approx((4.0 + 3.0) / 2) and hd["n_excluded"] == 2
    assert summary["definitions"]["hd95"].startswith("max of the 95th percentiles")


def test_nothing_defined_gives_none_not_zero() -> None:
    summary = summarize_scores([_row("a", 1, NAN, NAN)], "symmetric", "px")
    assert summary["overall"]["hd95"] == {"mean": None, "std": None, "n_cases": 0, "n_excluded": 1}


def test_empty_targets_counted_and_scored_in_dice_all() -> None:
    """A normal scan read as normal counts 1 in dice_all, one with a false positive 0 (and is counted)."""
    rows = [
        _row("lesion", 1, 0.5, 3.0),
        _row("normal-ok", 1, NAN, NAN, gt=0, pred=0),
        _row("normal-fp", 1, 0.0, NAN, gt=0, pred=7),
    ]
    summary = summarize_scores(rows, "symmetric", "px")
    assert summary["empty_target"] == {"n": 2, "false_positives": 1}
    assert summary["per_class"]["1"]["empty_target"] == {"n": 2, "false_positives": 1}
    assert summary["dice_all"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert summary["overall"]["dice"]["mean"] == pytest.approx(0.25)  # the undefined normal-ok case is left out
