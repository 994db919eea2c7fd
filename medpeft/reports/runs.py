"""Finished run directories as written by ``scripts/train.py``: finding them and reading their results.

A run directory is finished when it holds ``metrics.json`` (written atomically, last). Next to it,
``per_case.csv`` (header ``case,class,class_name,dice,iou,hd95,asd``, one row per test case and foreground class,
an empty field for an undefined value) gives the per-case scores that the comparison's ``±`` across cases and its
paired tests need. A case's score is the mean over its classes with a defined value, the convention of
:func:`medpeft.metrics.per_case_means` (re-implemented on the CSV text here so that reading results does not
import torch and MONAI). Runs made by versions before these files existed are still read: a missing ``name`` falls back
to ``method``, a missing ``protocol`` / ``distance_unit`` to ``"symmetric"`` / ``"px"`` (what those versions
computed: symmetric surface distances in pixels of the resized test images), and a missing ``per_case.csv`` leaves
:attr:`Run.per_case` as ``None``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DICE_ALL", "METRICS", "ComparisonError", "Run", "find_run_dirs", "load_run", "read_per_case"]

#: Segmentation metrics of a run, in table order.
METRICS: tuple[str, ...] = ("dice", "iou", "hd95", "asd")
#: The per-case Dice that counts every case (``metrics.json``'s ``dice_all`` rule), what paired tests compare.
DICE_ALL = "dice_all"

_REQUIRED_KEYS = ("method", "encoder", "dataset", "seed", *METRICS, "trainable_params", "total_params", "n_test_cases")


class ComparisonError(ValueError):
    """Runs that cannot be read or compared; the message is one line saying what is wrong and where."""


@dataclass
class Run:
    """One finished run.

    Args:
        path: The run directory.
        metrics: The content of its ``metrics.json``.
        per_case: Case id -> metric -> mean over foreground classes of that case's defined values (a metric is
            left out for a case where no class defines it); ``None`` without ``per_case.csv``.
    """

    path: Path
    metrics: dict[str, Any]
    per_case: dict[str, dict[str, float]] | None

    @property
    def name(self) -> str:
        """The label runs are grouped by: ``name``, or ``method`` for runs made before ``name`` existed."""
        return self.metrics.get("name") or self.metrics["method"]

    @property
    def seed(self) -> int:
        return int(self.metrics["seed"])

    @property
    def dataset(self) -> str:
        return str(self.metrics["dataset"])

    @property
    def protocol(self) -> str:
        return self.metrics.get("protocol") or "symmetric"

    @property
    def distance_unit(self) -> str:
        return self.metrics.get("distance_unit") or "px"

    def value(self, key: str) -> float | None:
        """A numeric entry of ``metrics.json``; ``None`` when missing, null or not finite."""
        value = self.metrics.get(key)
        return float(value) if value is not None and math.isfinite(value) else None


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Return the finished run directories named by ``paths``: each is a run directory or a folder searched
    recursively for ``metrics.json``. Order: as given, then sorted by path; duplicates removed.

    Raises:
        ComparisonError: A path does not exist.
    """
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise ComparisonError(f"{path} does not exist")
        if (path / "metrics.json").is_file():
            found[path] = None
        for metrics_file in sorted(path.rglob("metrics.json")):
            found[metrics_file.parent] = None
    return list(found)


def _number(text: str | None, path: str | os.PathLike[str], line: int, name: str) -> float | None:
    """The value of a ``per_case.csv`` field; ``None`` for an empty or non-finite one."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise ComparisonError(f"{path}:{line}: {name} {text!r} is not a number") from None
    return number if math.isfinite(number) else None


def read_per_case(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Read a ``per_case.csv`` into case id -> metric -> mean over classes of the defined (non-empty) values.

    With the ``gt_voxels`` and ``pred_voxels`` columns (every version that writes ``dice_all``) each case also gets
    ``"dice_all"``: the mean over its classes of the Dice with ``metrics.json``'s ``dice_all`` rule, a class absent
    from the ground truth scoring 1 when predicted empty and 0 with a false positive, so every case has one.

    Raises:
        ComparisonError: The file lacks the ``case`` column or a value is not a number.
    """
    values: dict[str, dict[str, list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "case" not in fields:
            raise ComparisonError(
                f"{path} has no 'case' column; expected header case,class,class_name,{','.join(METRICS)}"
            )
        counts_voxels = {"gt_voxels", "pred_voxels"} <= set(fields)
        for line, row in enumerate(reader, start=2):
            case = values.setdefault(row["case"], {name: [] for name in (*METRICS, DICE_ALL)})
            for name in METRICS:
                number = _number(row.get(name), path, line, name)
                if number is not None:
                    case[name].append(number)
            if counts_voxels:
                dice_all = _dice_all(row, path, line)
                if dice_all is not None:
                    case[DICE_ALL].append(dice_all)
    return {case: {name: sum(v) / len(v) for name, v in by_metric.items() if v} for case, by_metric in values.items()}


def _dice_all(row: dict[str, str], path: str | os.PathLike[str], line: int) -> float | None:
    """A row's Dice by the ``dice_all`` rule (an empty ground truth scores 1 if nothing is predicted, else 0)."""
    if _number(row.get("gt_voxels"), path, line, "gt_voxels") == 0:
        return 1.0 if _number(row.get("pred_voxels"), path, line, "pred_voxels") == 0 else 0.0
    return _number(row.get("dice"), path, line, "dice")


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read the ``metrics.json`` (and ``per_case.csv`` if present) of a finished run directory.

    Raises:
        ComparisonError: ``metrics.json`` is not valid JSON or lacks a required key.
    """
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ComparisonError(f"{metrics_file} is not valid JSON: {err}") from None
    missing = [key for key in _REQUIRED_KEYS if key not in metrics]
    if missing:
        raise ComparisonError(f"{metrics_file} lacks {', '.join(missing)}; is it a metrics.json of scripts/train.py?")
    per_case_file = run_dir / "per_case.csv"
    per_case = read_per_case(per_case_file) if per_case_file.is_file() else None
    return Run(path=run_dir, metrics=metrics, per_case=per_case)
