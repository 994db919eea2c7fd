"""Write an evaluation to disk: ``per_case.csv``, ``summary.json`` and overlays of the best, median and worst case.

Every file is written atomically (temporary file, then rename), so a file that exists is complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from medpeft.evaluation.evaluator import CaseView, EvaluationResult
from medpeft.io import atomic_output, write_text_atomic
from medpeft.metrics import per_case_means

__all__ = ["PER_CASE_COLUMNS", "json_safe", "pick_examples", "write_evaluation"]

PER_CASE_COLUMNS = ("case", "class", "class_name", "dice", "iou", "hd95", "asd", "gt_voxels", "pred_voxels")
# Class colours of the overlays (class 1 first); tab10 without its grey.
_COLOURS = ["#d62728", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf floats replaced by ``None`` (JSON has neither), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def _csv_field(value: Any) -> Any:
    # an undefined score is an empty field, never "nan"
    return "" if isinstance(value, float) and not math.isfinite(value) else value


def pick_examples(rows: list[dict[str, Any]]) -> dict[str, str]:
    """``{"best": case, "median": case, "worst": case}`` by per-case mean Dice (ties: first in case order)."""
    dice = per_case_means(rows, "dice")
    if not dice:
        return {}
    ranked = sorted(dice, key=lambda case: -dice[case])  # stable: equal scores keep case order
    return {"best": ranked[0], "median": ranked[len(ranked) // 2], "worst": ranked[-1]}


def _overlay(view: CaseView, title: str, num_classes: int) -> bytes:
    """PNG of image | ground truth over image | prediction over image."""
    colours = ListedColormap(_COLOURS[: max(1, num_classes - 1)])
    image = view.image.numpy()
    fig = Figure(figsize=(9, 3.3))  # no pyplot: no global figure state, no GUI backend
    axes = fig.subplots(1, 3)
    for ax, (panel, mask) in zip(axes, (("image", None), ("ground truth", view.label), ("prediction", view.pred))):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
        if mask is not None:
            shown = np.ma.masked_equal(mask.numpy(), 0)
            ax.imshow(shown, cmap=colours, vmin=1, vmax=max(1, num_classes - 1), alpha=0.45, interpolation="nearest")
        ax.set_title(panel, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_evaluation(
    result: EvaluationResult, out_dir: str | os.PathLike[str], num_classes: int, overlays: bool = True
) -> Path:
    """Write ``per_case.csv``, ``summary.json`` and (optionally) ``overlays/{best,median,worst}_<case>.png``.

    Args:
        result: From :func:`~medpeft.evaluation.evaluator.evaluate_split`.
        out_dir: Created if needed.
        num_classes: ``K`` (background included), for the overlay colours.
        overlays: Write the PNG overlays.

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "per_case.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_CASE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: _csv_field(row[key]) for key in PER_CASE_COLUMNS} for row in result.rows)
    examples = pick_examples(result.rows)
    summary = {**result.summary, "examples": examples}
    write_text_atomic(out / "summary.json", json.dumps(json_safe(summary), indent=2) + "\n")
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
        dice = per_case_means(result.rows, "dice")
        for rank, case in examples.items():
            png = _overlay(result.views[case], f"{rank}: {case} (Dice {dice[case]:.3f})", num_classes)
            with atomic_output(out / "overlays" / f"{rank}_{case}.png") as tmp:
                Path(tmp).write_bytes(png)
    return out
