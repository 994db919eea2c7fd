"""Equal tuning for sweeps: every method's encoder learning rate chosen on validation Dice from one shared grid.

``scripts/sweep.py --tune-lr 1e-4,1e-3,1e-2`` first trains each method once per rate of the grid (the sweep's first
seed, ``optim.encoder_lr`` set to the rate, everything else as the final runs), into
``<out>/tuning/<method>/lr<rate>/``. Each method's rate is the one with the highest validation score
(:func:`validation_score`); the test split is never read for the choice. The final seeds then train with that rate;
the first seed's final run *is* its tuning run at the chosen rate (same config, same seed), so it is not trained
twice. ``<out>/tuning.json`` and the comparison's ``tuning.md`` record the grid, every score and every choice.

``decoder_only`` is not tuned (no encoder parameter trains, so ``optim.encoder_lr`` changes nothing) and keeps
``optim.lr``; every other method, ``full`` included, gets the same grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpeft.io import write_text_atomic

__all__ = ["UNTUNED_METHODS", "TuningChoice", "format_rate", "tuning_markdown", "validation_score", "write_tuning"]

#: Methods whose encoder learning rate has no effect, so the grid is not run for them.
UNTUNED_METHODS: tuple[str, ...] = ("decoder_only",)


def format_rate(rate: float) -> str:
    """A rate as a folder and table label: ``0.0003`` -> ``"3e-04"``."""
    return f"{rate:.0e}"


def validation_score(run_dir: Path) -> float:
    """The validation score a finished run is tuned by: Dice over every validation case after the chosen
    post-processing (``val_dice_all_by_min_component_size`` at ``min_component_size``; images without a lesion count,
    as on the test), or the best checkpoint's ``val/dice`` when post-processing was not chosen on validation.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``metrics.json`` below it.
    """
    found = sorted(run_dir.rglob("metrics.json"))
    if not found:
        raise FileNotFoundError(f"no finished run (metrics.json) under {run_dir}")
    metrics = json.loads(found[-1].read_text())
    by_size = metrics.get("val_dice_all_by_min_component_size")
    if by_size:
        return float(by_size[str(metrics["min_component_size"])])
    return float(metrics["best_val_dice"])


@dataclass(frozen=True)
class TuningChoice:
    """One method's tuning: the validation score per rate and the rate chosen (the highest score, ties to the
    smaller rate)."""

    method: str
    scores: dict[float, float]

    @property
    def rate(self) -> float:
        return max(sorted(self.scores), key=lambda rate: self.scores[rate])


def write_tuning(choices: list[TuningChoice], grid: list[float], path: Path) -> None:
    """Write ``tuning.json``: the grid, the score per method and rate, and each choice (atomically)."""
    record: dict[str, Any] = {
        "grid": grid,
        "score": "validation Dice over all cases after post-processing (medpeft.training.tuning.validation_score)",
        "untuned": list(UNTUNED_METHODS),
        "methods": {
            c.method: {"scores": {format_rate(r): s for r, s in c.scores.items()}, "chosen": c.rate} for c in choices
        },
    }
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def tuning_markdown(choices: list[TuningChoice], grid: list[float], seed: int) -> str:
    """The tuning protocol and its outcome as a Markdown table (one row per method, one column per rate)."""
    header = "| method | " + " | ".join(format_rate(r) for r in grid) + " | chosen |"
    lines = [
        (
            f"Encoder learning rate chosen per method on validation Dice (all cases) from one grid, seed {seed}; "
            f"{', '.join(UNTUNED_METHODS)} not tuned (nothing in the encoder trains). The test split played no part."
        ),
        "",
        header,
        "|" + " --- |" * (len(grid) + 2),
    ]
    for choice in choices:
        cells = [f"**{choice.scores[r]:.4f}**" if r == choice.rate else f"{choice.scores[r]:.4f}" for r in grid]
        lines.append(f"| {choice.method} | " + " | ".join(cells) + f" | {format_rate(choice.rate)} |")
    return "\n".join(lines) + "\n"
