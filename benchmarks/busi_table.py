#!/usr/bin/env python
"""The docs/results.md table: medpeft runs and reference-pipeline runs side by side, from their ``per_case.csv``.

Both write ``per_case.csv`` with ``case, class, dice, gt_voxels, pred_voxels`` (one row per test image for a binary
task), so one rule scores them all, per image at the training size:

* ``dice_all``: mean over every test image; an image without lesion scores 1 if nothing was predicted, else 0;
* ``dice_lesion``: mean over the images with a lesion;
* ``fp_normal``: images without lesion that got a false positive.

Each row averages its runs (one per seed) and shows ``mean ± std over seeds`` (the std only with two or more).

Usage:
    python benchmarks/busi_table.py --row "medpeft full=runs/x/full/seed*/**/per_case.csv" \\
        --row "reference full=runs/reference/full/seed*/per_case.csv"
"""

from __future__ import annotations

import argparse
import csv
import glob
import statistics
from pathlib import Path

__all__ = ["main", "score_run"]


def score_run(per_case: Path) -> dict[str, float]:
    """``dice_all``, ``dice_lesion``, ``fp_normal``, ``n`` and ``n_normal`` of one run's ``per_case.csv``."""
    with open(per_case, newline="") as handle:
        rows = list(csv.DictReader(handle))
    all_images, lesions, false_positives, normals = [], [], 0, 0
    for row in rows:
        gt, pred = int(row["gt_voxels"]), int(row["pred_voxels"])
        if gt == 0:
            normals += 1
            false_positives += pred > 0
            all_images.append(1.0 if pred == 0 else 0.0)
        else:
            dice = float(row["dice"])
            lesions.append(dice)
            all_images.append(dice)
    return {
        "dice_all": statistics.fmean(all_images),
        "dice_lesion": statistics.fmean(lesions),
        "fp_normal": float(false_positives),
        "n": float(len(rows)),
        "n_normal": float(normals),
    }


def _cell(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.0f}" if digits == 1 and mean.is_integer() else f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", action="append", required=True, metavar="LABEL=GLOB", help="a row and its runs")
    args = parser.parse_args(argv)
    lines = [
        "| row | seeds | Dice, all images | Dice, lesion images | normal images with a false positive |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in args.row:
        label, _, pattern = spec.partition("=")
        files = sorted(glob.glob(pattern, recursive=True))
        if not files:
            raise SystemExit(f"row {label!r}: no per_case.csv matches {pattern!r}")
        scores = [score_run(Path(f)) for f in files]
        normal = f"{_cell([s['fp_normal'] for s in scores], 1)} of {int(scores[0]['n_normal'])}"
        lines.append(
            f"| {label} | {len(scores)} | {_cell([s['dice_all'] for s in scores], 3)} | "
            f"{_cell([s['dice_lesion'] for s in scores], 3)} | {normal} |"
        )
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
