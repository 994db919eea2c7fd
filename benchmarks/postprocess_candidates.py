#!/usr/bin/env python
"""Post-processing rules measured on finished runs: each rule's parameter chosen on the validation split by Dice over
all images, then scored once on the test split (docs/results.md, "false positives on normal scans").

Per run the best checkpoint predicts the foreground probability of every val and test image at the training size
(the run's own split.json); each rule turns probabilities into a mask:

* ``argmax``: probability > 0.5, nothing else (what medpeft did before ``postprocess``);
* ``min_component``: then remove components under N network pixels (medpeft's ``postprocess.min_component_size``);
* ``image_gate``: empty mask when the image's highest probability is under t;
* ``threshold``: probability > t instead of 0.5;
* ``largest_component``: keep the largest component only, if it has at least N pixels;
* ``component_max_prob`` / ``component_mean_prob``: keep a component when its highest / mean probability is >= t.

Prints, per rule, the chosen parameters and mean ± std over the runs of Dice over all test images, Dice over the
lesion images and the number of normal images with a false positive. Binary tasks only (class 1 = foreground).

Usage:
    python benchmarks/postprocess_candidates.py runs/x/seed0/busi_from_acdc/2* runs/x/seed1/busi_from_acdc/2* ...
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medpeft.evaluation.checkpoint import find_run_checkpoint, load_trained_network
from medpeft.evaluation.postprocess import MIN_COMPONENT_SIZES, dice_all_per_case, remove_small_components
from medpeft.experiment.config import load_config
from medpeft.experiment.data import datamodule_from_config


def _by_component(p: np.ndarray, t: float, stat: Callable) -> np.ndarray:
    components, n = ndimage.label(p > 0.5)
    if n == 0:
        return components > 0
    keep = np.concatenate([[False], np.asarray(stat(p, components, np.arange(1, n + 1))) >= t])
    return keep[components]


def _largest(p: np.ndarray, n_min: int) -> np.ndarray:
    components, n = ndimage.label(p > 0.5)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == sizes.argmax() if n and sizes.max() >= n_min else np.zeros(p.shape, bool)


def _min_component(p: np.ndarray, size: int) -> np.ndarray:
    pred = torch.from_numpy((p > 0.5).astype(np.int64))
    return remove_small_components(pred, 2, size, p.shape[-1]).numpy() > 0


RULES: dict[str, tuple[list, Callable[[np.ndarray, float], np.ndarray]]] = {
    "argmax": ([None], lambda p, _: p > 0.5),
    "min_component": (list(MIN_COMPONENT_SIZES), _min_component),
    "image_gate": ([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98], lambda p, t: (p > 0.5) & (p.max() >= t)),
    "threshold": ([0.3, 0.4, 0.5, 0.6, 0.7, 0.8], lambda p, t: p > t),
    "largest_component": ([0, 40, 160], _largest),
    "component_max_prob": ([0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99], lambda p, t: _by_component(p, t, ndimage.maximum)),
    "component_mean_prob": ([0.5, 0.6, 0.7, 0.8, 0.9], lambda p, t: _by_component(p, t, ndimage.mean)),
}


def probabilities(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``split -> (foreground probabilities [N, S, S], labels [N, S, S])`` for val and test."""
    cfg = load_config(run / "config.yaml")
    net = load_trained_network(cfg, find_run_checkpoint(run)).eval()
    data = datamodule_from_config(cfg, evaluation=True, split_file=run / "split.json")
    data.setup()
    out = {}
    for split in ("val", "test"):
        probs, labels = [], []
        for batch in torch.utils.data.DataLoader(data.datasets[split], batch_size=32):
            with torch.no_grad():
                probs.append(net(batch["image"]).softmax(1)[:, 1].numpy())
            labels.append(batch["label"][:, 0].numpy())
        out[split] = (np.concatenate(probs), np.concatenate(labels))
    return out


def score(masks: list[np.ndarray], labels: np.ndarray) -> tuple[float, float, int]:
    """Dice over all images, Dice over the lesion images, normal images with a false positive."""
    dice = [
        dice_all_per_case(torch.from_numpy(m.astype(np.int64)), torch.from_numpy(g), 2) for m, g in zip(masks, labels)
    ]
    lesion = [d for d, g in zip(dice, labels) if g.any()]
    false_positives = sum(int(m.any()) for m, g in zip(masks, labels) if not g.any())
    return statistics.fmean(dice), statistics.fmean(lesion), false_positives


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (one per seed)")
    args = parser.parse_args(argv)
    table: dict[str, list[tuple]] = {rule: [] for rule in RULES}
    for run in args.runs:
        data = probabilities(run)
        for rule, (params, apply) in RULES.items():
            val = [score([apply(p, q) for p in data["val"][0]], data["val"][1])[0] for q in params]
            best = params[int(np.argmax(val))]  # the first (smallest change) on ties
            table[rule].append((best, *score([apply(p, best) for p in data["test"][0]], data["test"][1])))
    print("| rule | chosen on val | Dice, all images | Dice, lesion images | normal images with a false positive |")
    print("| --- | --- | --- | --- | --- |")
    for rule, rows in table.items():
        cells = [", ".join(str(r[0]) for r in rows)]
        for column, digits in ((1, 3), (2, 3), (3, 1)):
            values = [r[column] for r in rows]
            spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.{digits}f}{spread}")
        print(f"| {rule} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
