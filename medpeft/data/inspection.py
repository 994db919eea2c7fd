"""Dataset inspection behind ``scripts/inspect_data.py``: what the readers make of a dataset folder, before training.

:func:`inspect_dataset` reads every case of the train / val / test splits, split exactly as training splits them
for the same ``seed``, ``val_fraction`` and ``test_fraction``, and returns a plain, JSON-serialisable report:

* ``counts``: cases per split (images for 2D datasets, volumes for 3D ones; 3D also gives ``slices`` per split);
* ``shapes``: native image shapes (``[H, W]`` from the image file headers for 2D, ``[D, H, W]`` for 3D volumes),
  the most common ones with their counts, and the smallest and largest size along each axis;
* ``spacing`` (3D only): voxel spacings ``(sz, sy, sx)``, the most common ones and min / median / max per axis;
* ``labels``: the label values found and, per class, the fraction of all pixels (voxels) and the fraction of
  cases that contain it. 2D labels are counted on the ``S x S`` items training sees (nearest-neighbour resized),
  3D labels on the volumes at native resolution;
* ``near_duplicates`` (BUSI only): the near-duplicate groups the split keeps on one side.

It also returns a few :class:`InspectionSample` per split (evenly spaced over the split) for
:func:`~medpeft.data.montage.save_montage`. Reading goes through the registered builders, so a file the training
would choke on (unpaired, unreadable, wrong label values) raises here too, naming it.

Command line (see :func:`main`)::

    python scripts/inspect_data.py --dataset busi --root /data/busi
    python scripts/inspect_data.py --dataset acdc --root /data/acdc --json > acdc.json

User errors (missing root, unknown dataset, bad option, bad file) print ``error: ...`` on stderr, first line naming
the path or key (a missing dataset adds the expected layout and download page on the next lines, as in
``scripts/train.py``), and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from medpeft.cli import exit_with_error
from medpeft.data.busi import busi_near_duplicate_groups
from medpeft.data.montage import save_montage
from medpeft.data.registry import DATASETS, DatasetNotFoundError, build_dataset, dataset_info
from medpeft.data.splits import SPLIT_NAMES
from medpeft.data.volumes import VOLUME_DATASETS, build_volume_dataset
from medpeft.io import write_text_atomic

__all__ = ["InspectionSample", "build_parser", "format_report", "inspect_dataset", "main"]

#: Builder arguments that inspection sets itself, with the command-line flag to use instead (``None``: none).
RESERVED_OPTIONS: dict[str, str | None] = {
    "root": "--root",
    "split": None,
    "seed": "--seed",
    "val_fraction": "--val-fraction",
    "test_fraction": "--test-fraction",
    "image_size": "--image-size",
    "augment": None,
}
_MOST_COMMON = 10  # shapes and spacings listed with their counts
_BUSI_GROUP_OPTIONS = ("include_normal", "dedup_threshold", "skip_bad_cases")


@dataclass(frozen=True)
class InspectionSample:
    """One case as drawn in the montage.

    Attributes:
        split: ``"train"``, ``"val"`` or ``"test"``.
        name: Case id (3D: volume id and slice, ``"patient001_ED_z05"``).
        image: float32 ``[C, H, W]`` in ``[0, 1]``, ``C`` = 1 or 3.
        label: Class ids ``[H, W]``.
    """

    split: str
    name: str
    image: np.ndarray
    label: np.ndarray


def _check_options(builder: Any, dataset: str, options: Mapping[str, Any]) -> None:
    """Refuse reserved options, and options the builder does not take (unless it forwards ``**options``)."""
    for key in options:
        if key in RESERVED_OPTIONS:
            flag = RESERVED_OPTIONS[key]
            raise ValueError(f"option '{key}' is set by the inspection" + (f"; use {flag}" if flag else ""))
    parameters = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        takes = sorted(set(parameters) - set(RESERVED_OPTIONS))
        raise ValueError(f"dataset '{dataset}' has no option {', '.join(map(repr, unknown))}; it takes: {takes}")


def _evenly_spaced(n: int, k: int) -> set[int]:
    """``min(n, k)`` indices spread evenly over ``range(n)``, first and last included."""
    return set(np.linspace(0, n - 1, min(n, k)).round().astype(int).tolist()) if n else set()


def _native_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header (no pixel data is decoded)."""
    with Image.open(path) as img:
        return img.height, img.width


def _shape_summary(shapes: Counter[tuple[int, ...]], axes: str) -> dict[str, Any]:
    sizes = np.array(list(shapes.elements()))  # [N, ndim]
    return {
        "axes": axes,
        "distinct": len(shapes),
        "most_common": [[list(shape), count] for shape, count in shapes.most_common(_MOST_COMMON)],
        "min": sizes.min(axis=0).tolist(),
        "max": sizes.max(axis=0).tolist(),
    }


def _spacing_summary(spacings: Counter[tuple[float, ...]]) -> dict[str, Any]:
    values = np.array(list(spacings.elements()))  # [N, 3]
    return {
        "axes": "(sz, sy, sx) in mm; (1, 1, 1) means unknown (TransUNet's Synapse files store none)",
        "distinct": len(spacings),
        "most_common": [[list(spacing), count] for spacing, count in spacings.most_common(_MOST_COMMON)],
        "min": values.min(axis=0).tolist(),
        "median": np.median(values, axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
    }


def _label_summary(pixels: np.ndarray, cases: np.ndarray, n_cases: int, names: Sequence[str]) -> dict[str, Any]:
    """Per class: fraction of all pixels and of cases holding it. ``pixels`` / ``cases`` are per-class counts."""
    total = int(pixels.sum())
    return {
        "values": np.flatnonzero(pixels).tolist(),
        "classes": [
            {
                "id": c,
                "name": names[c],
                "fraction": float(pixels[c] / total) if total else 0.0,
                "case_fraction": float(cases[c] / n_cases) if n_cases else 0.0,
            }
            for c in range(len(pixels))
        ],
    }


def inspect_dataset(
    name: str,
    root: str | os.PathLike[str] | None,
    *,
    image_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    options: Mapping[str, Any] | None = None,
    samples: int = 4,
    progress: bool = False,
) -> tuple[dict[str, Any], list[InspectionSample]]:
    """Read every case of a registered dataset and summarise it (see the module docstring for the report's keys).

    Args:
        name: Registered dataset name.
        root: Dataset folder; ``None`` uses the dataset's default root.
        image_size: Side ``S`` of the 2D items whose labels are counted (unused for 3D datasets).
        seed: Seed of the split, as ``data.split_seed`` in a config.
        val_fraction: Validation fraction, as ``data.val_fraction``.
        test_fraction: Test fraction, as ``data.test_fraction``.
        options: Builder options, as ``data.options`` (e.g. ``{"include_normal": False}`` for BUSI).
        samples: Cases per split kept for the montage.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        ``(report, montage samples)``.

    Raises:
        ValueError: Unknown dataset, reserved or unknown option, bad fractions, or a bad file (``CaseFileError``
            naming it).
        DatasetNotFoundError: If the dataset is not where ``root`` says.
    """
    info = dataset_info(name)
    options = dict(options or {})
    if root is None:
        if info.default_root is None:
            raise DatasetNotFoundError(f"dataset '{name}' has no default location; pass --root PATH")
        root = info.default_root
    volumetric = name in VOLUME_DATASETS
    builder = VOLUME_DATASETS[name] if volumetric else DATASETS[name]
    _check_options(builder, name, options)
    split_args = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction}
    try:
        splits = {
            split: build_volume_dataset(name, root, split, **split_args, **options)
            if volumetric
            else build_dataset(name, root, split, image_size=image_size, augment=False, **split_args, **options)
            for split in SPLIT_NAMES
        }
    except TypeError as err:  # an option that a builder forwarding **options does not take
        raise ValueError(f"invalid option for dataset '{name}': {err}") from err

    pixels = np.zeros(info.num_classes, np.int64)  # per-class pixel (voxel) counts
    cases = np.zeros(info.num_classes, np.int64)  # per-class number of cases holding the class
    shapes: Counter[tuple[int, ...]] = Counter()
    spacings: Counter[tuple[float, ...]] = Counter()
    slices: dict[str, int] = {}
    drawn: list[InspectionSample] = []
    n_cases = sum(len(dataset) for dataset in splits.values())
    with tqdm(total=n_cases, desc=f"reading {name}", unit="case", file=sys.stderr, disable=not progress) as bar:
        for split, dataset in splits.items():
            chosen = _evenly_spaced(len(dataset), samples)
            slices[split] = 0
            for index in range(len(dataset)):
                item = dataset[index]
                label = item["label"].numpy()  # 2D: [1, S, S]; 3D: [D, H, W]
                if volumetric:
                    shapes[tuple(label.shape)] += 1
                    spacings[tuple(item["spacing"])] += 1
                    slices[split] += label.shape[0]
                else:
                    shapes[_native_shape(dataset.data[index]["image"])] += 1
                counts = np.bincount(label.ravel(), minlength=info.num_classes)
                assert len(counts) == info.num_classes, f"{item['name']}: the reader let a label >= num_classes pass"
                pixels += counts
                cases += counts > 0
                if index in chosen:
                    drawn.append(_sample(split, item, volumetric))
                bar.update()

    report: dict[str, Any] = {
        "dataset": name,
        "root": str(Path(root).resolve()),
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "class_names": list(info.class_names),
        "split": split_args,
        "options": options,
        "unit": "volumes" if volumetric else "images",
        "counts": {split: len(dataset) for split, dataset in splits.items()} | {"total": n_cases},
        "shapes": _shape_summary(shapes, "[D, H, W]" if volumetric else "[H, W]"),
        "labels": _label_summary(pixels, cases, n_cases, info.class_names)
        | {"counted_on": "voxels at native resolution" if volumetric else f"{image_size}x{image_size} px items"},
    }
    if volumetric:
        report["slices"] = slices | {"total": sum(slices.values())}
        report["spacing"] = _spacing_summary(spacings)
    else:
        report["image_size"] = image_size
    if name == "busi":
        groups = busi_near_duplicate_groups(root, **{k: v for k, v in options.items() if k in _BUSI_GROUP_OPTIONS})
        report["near_duplicates"] = {
            "groups": len(groups),
            "images": sum(len(group) for group in groups),
            "examples": groups[:5],
        }
    return report, drawn


def _sample(split: str, item: Mapping[str, Any], volumetric: bool) -> InspectionSample:
    """2D: the item as is. 3D: the slice of the volume with the most foreground (the middle one if it has none)."""
    image, label = item["image"].numpy(), item["label"].numpy()
    if not volumetric:
        return InspectionSample(split, item["name"], image, label[0])
    foreground = (label > 0).sum(axis=(1, 2))  # [D]
    z = int(foreground.argmax()) if foreground.any() else label.shape[0] // 2
    return InspectionSample(split, f"{item['name']}_z{z:02d}", image[z : z + 1], label[z])


# ----------------------------------------------------------------------------------------------------- text report


def _shape_text(shape: Sequence[Any]) -> str:
    return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in shape)


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a few human-readable lines (what ``scripts/inspect_data.py`` prints without ``--json``)."""
    counts, split = report["counts"], report["split"]
    lines = [
        (
            f"dataset {report['dataset']} at {report['root']} ({report['in_channels']} channel(s), "
            f"{report['num_classes']} classes: {', '.join(report['class_names'])})"
        ),
        f"split (seed {split['seed']}, val_fraction {split['val_fraction']}, test_fraction {split['test_fraction']}"
        + (f", options {report['options']}" if report["options"] else "")
        + "): "
        + " | ".join(f"{name} {counts[name]}" for name in SPLIT_NAMES)
        + f" | total {counts['total']} {report['unit']}",
    ]
    if "slices" in report:
        lines.append("2D slices: " + " | ".join(f"{name} {report['slices'][name]}" for name in SPLIT_NAMES))
    shapes = report["shapes"]
    common = ", ".join(f"{_shape_text(shape)} ({count})" for shape, count in shapes["most_common"][:5])
    lines.append(
        f"native shapes {shapes['axes']}: {shapes['distinct']} distinct; most common {common}; "
        f"min {_shape_text(shapes['min'])}, max {_shape_text(shapes['max'])}"
    )
    if "spacing" in report:
        spacing = report["spacing"]
        lines.append(
            f"voxel spacing (sz, sy, sx) mm: {spacing['distinct']} distinct; min {_shape_text(spacing['min'])}, "
            f"median {_shape_text(spacing['median'])}, max {_shape_text(spacing['max'])}"
            + (" (none stored: distances in voxels)" if spacing["min"] == spacing["max"] == [1.0, 1.0, 1.0] else "")
        )
    labels = report["labels"]
    lines.append(f"label values {labels['values']} (counted on {labels['counted_on']}):")
    width = max(len(c["name"]) for c in labels["classes"])
    elements = "voxels" if "spacing" in report else "pixels"
    lines.append(f"  {'id':>3}  {'class':<{width}}  {elements:>8}  {'cases':>8}")
    for c in labels["classes"]:
        lines.append(
            f"  {c['id']:>3}  {c['name']:<{width}}  {100 * c['fraction']:>7.2f}%  {100 * c['case_fraction']:>7.2f}%"
        )
    if "near_duplicates" in report:
        dup = report["near_duplicates"]
        example = f", e.g. {dup['examples'][0]}" if dup["examples"] else ""
        lines.append(
            f"near-duplicate groups, each kept in one split: {dup['groups']} ({dup['images']} images){example}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``scripts/inspect_data.py``."""
    parser = argparse.ArgumentParser(
        prog="inspect_data.py",
        description=(
            "Read a dataset the way training reads it and report split sizes, native image shapes, voxel spacings "
            "(3D), label values and class frequencies (BUSI: near-duplicate groups); write a montage of a few "
            "cases per split with their masks (<out>/montage.png) and the report (<out>/report.json). "
            "Exits with status 2 on a data or argument error."
        ),
    )
    parser.add_argument("--dataset", required=True, metavar="NAME", help=f"registered dataset: {sorted(DATASETS)}")
    parser.add_argument("--root", metavar="PATH", help="dataset folder (default: the dataset's own, if it has one)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/inspect/<dataset>)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=128,
        metavar="S",
        help="side of the 2D items, as data.image_size (128; 3D volumes are read at native size)",
    )
    parser.add_argument(
        "--option",
        dest="options",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="dataset option, as in data.options (value parsed as YAML), e.g. include_normal=false. Repeatable.",
    )
    parser.add_argument("--samples", type=int, default=4, metavar="N", help="montage cases per split (4)")
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="split seed, as data.split_seed (0)")
    parser.add_argument("--val-fraction", type=float, default=0.15, metavar="F", help="as data.val_fraction (0.15)")
    parser.add_argument("--test-fraction", type=float, default=0.15, metavar="F", help="as data.test_fraction (0.15)")
    return parser


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            exit_with_error(f"--option {pair!r} must look like KEY=VALUE, e.g. include_normal=false")
        options[key.strip()] = yaml.safe_load(value)
    return options


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Inspect one dataset: ``inspect_data.py --dataset NAME --root PATH [--json] [--out DIR] ...``.

    Args:
        argv: Command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The report, with ``"montage"`` and ``"report"`` (the written files) added.

    Raises:
        SystemExit: With status 2 on bad arguments and on a dataset or file error (see :func:`_fail`).
    """
    args = build_parser().parse_args(argv)
    if args.samples < 0 or args.image_size < 1:
        exit_with_error(f"need --samples >= 0 and --image-size >= 1, got {args.samples} and {args.image_size}")
    options = _parse_options(args.options)
    try:
        report, samples = inspect_dataset(
            args.dataset,
            args.root,
            image_size=args.image_size,
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            options=options,
            samples=args.samples,
            progress=True,
        )
    except (DatasetNotFoundError, ValueError) as err:  # missing data, unknown dataset / option, bad file
        exit_with_error(str(err))
    out = Path(args.out) if args.out else Path("runs") / "inspect" / args.dataset
    sizes = ", ".join(f"{split} {report['counts'][split]}" for split in SPLIT_NAMES)
    title = f"{args.dataset}: {sizes} {report['unit']}"
    report["montage"] = str(save_montage(samples, report["class_names"], out / "montage.png", title=title))
    report["report"] = str(out / "report.json")
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
        print(f"montage: {report['montage']}\nreport:  {report['report']}")
    return report
