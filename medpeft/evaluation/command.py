"""``scripts/evaluate.py``: score a trained run (or a checkpoint) on a held-out split and write the reports.

The network is rebuilt from the run's ``config.yaml`` (pretrained weights, then adapters) and the checkpoint's
weights are loaded (:func:`~medpeft.evaluation.checkpoint.load_trained_network`); the split is built by training's
code from the same config and restricted to the run's ``split.json`` (when the checkpoint sits in a run directory and
no other ``--config`` is given), so the cases scored are exactly those the run held out. Inference runs in float32 with deterministic algorithms, so evaluating a checkpoint twice gives the
same numbers, and evaluating a run directory reproduces the test metrics ``scripts/train.py`` wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from medpeft.cli import exit_with_error
from medpeft.data import VOLUME_DATASETS, DatasetNotFoundError, SplitMismatchError
from medpeft.evaluation.checkpoint import find_run_checkpoint, load_trained_network
from medpeft.evaluation.evaluator import RESOLUTIONS, evaluate_split
from medpeft.evaluation.report import write_evaluation
from medpeft.experiment.config import ConfigError, load_config
from medpeft.metrics import PROTOCOLS
from medpeft.models import PretrainedWeightsError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``scripts/evaluate.py``."""
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description=(
            "Evaluate a trained model on a held-out split: per_case.csv (every case and class), summary.json "
            "(mean ± std per class and overall, the metric definitions and how many cases were excluded) and "
            "overlays/ (best, median and worst case). Exits with status 2 on a missing run, checkpoint or dataset."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="a run directory of scripts/train.py (its best checkpoint)")
    source.add_argument(
        "--checkpoint", metavar="FILE", help="a Lightning .ckpt or a .safetensors state dict of the whole network"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="config of the checkpoint (default: config.yaml of the run it sits in)"
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
    parser.add_argument("--data-root", metavar="PATH", help="dataset folder, if it moved since training")
    parser.add_argument(
        "--protocol",
        default="symmetric",
        choices=PROTOCOLS,
        help="symmetric (default: MONAI HD95/ASD, spacing in mm) or transunet (TransUNet/Swin-Unet scoring)",
    )
    parser.add_argument(
        "--resolution",
        choices=RESOLUTIONS,
        help="2D datasets: score at the training size (train) or at each image's own size (native); default: the "
        "config's data.test_resolution",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: <run>/eval/<split>-<protocol>[-native])")
    parser.add_argument("--batch-size", type=int, metavar="N", help="images or slices per forward pass")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-overlays", action="store_true", help="skip the PNG overlays")
    return parser


def _resolve(args: argparse.Namespace) -> tuple[Path, Path, Path, Path | None]:
    """Return (checkpoint, config file, default output folder, the run's split.json if there is one)."""
    if args.run is not None:
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            exit_with_error(f"{run}: not a run directory of scripts/train.py (no config.yaml)")
        try:
            checkpoint = find_run_checkpoint(run)
        except FileNotFoundError as err:
            exit_with_error(str(err))
        split_file = run / "split.json"
        return (
            checkpoint,
            Path(args.config or run / "config.yaml"),
            run / "eval",
            split_file if split_file.is_file() else None,
        )
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        exit_with_error(f"checkpoint {checkpoint} does not exist")
    run = checkpoint.resolve().parent.parent  # <run>/checkpoints/<file>
    config = Path(args.config) if args.config else run / "config.yaml"
    if not config.is_file():
        exit_with_error(f"no config for {checkpoint}: {config} does not exist; pass --config FILE")
    in_run = (run / "config.yaml").is_file()
    out = run / "eval" if in_run else Path("runs") / "eval" / checkpoint.stem
    split_file = run / "split.json" if in_run and (run / "split.json").is_file() and not args.config else None
    return checkpoint, config, out, split_file


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run ``evaluate.py``; return the summary that was written.

    Raises:
        SystemExit: Status 2 on a missing run, checkpoint, config or dataset, or weights that do not fit.
    """
    args = build_parser().parse_args(argv)
    checkpoint, config_file, default_out, split_file = _resolve(args)
    try:
        cfg = load_config(config_file)
    except ConfigError as err:
        exit_with_error(str(err))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        net = load_trained_network(cfg, checkpoint).to(device)
    except PretrainedWeightsError as err:
        exit_with_error(str(err))
    except RuntimeError as err:  # load_state_dict: missing / unexpected keys or shapes
        exit_with_error(f"{checkpoint} does not fit the network of {config_file}: {str(err).splitlines()[0]}")
    try:
        resolution = args.resolution or cfg.data.test_resolution
        result = evaluate_split(
            net,
            cfg,
            args.split,
            args.protocol,
            args.data_root,
            args.batch_size,
            resolution=resolution,
            split_file=split_file,
        )
    except DatasetNotFoundError as err:
        exit_with_error(str(err))
    except SplitMismatchError as err:
        exit_with_error(f"{split_file}: {err}")
    suffix = "-native" if result.summary["resolution"] == "native" and cfg.data.dataset not in VOLUME_DATASETS else ""
    out = Path(args.out) if args.out else default_out / f"{args.split}-{args.protocol}{suffix}"
    write_evaluation(result, out, cfg.model.num_classes, overlays=not args.no_overlays)

    summary = result.summary
    unit = summary["distance_unit"]
    print(
        f"{checkpoint} on {cfg.data.dataset} {args.split} ({summary['n_cases']} cases, protocol {args.protocol}, "
        f"{summary['resolution']} resolution)"
    )
    for key, entry in [*summary["per_class"].items(), ("mean", summary["overall"])]:
        label = entry.get("name", key) if key != "mean" else "mean over classes"
        cells = []
        for metric in ("dice", "iou", "hd95", "asd"):
            mean, std = entry[metric]["mean"], entry[metric]["std"]
            text = "n/a" if mean is None else f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")
            cells.append(f"{metric} {text}{' ' + unit if metric in ('hd95', 'asd') else ''}")
        print(f"  {label:<18} " + " | ".join(cells))
    if summary["empty_target"]["n"]:
        empty = summary["empty_target"]
        print(
            f"  cases without a class: {empty['n']}, with a false positive: {empty['false_positives']}; "
            f"dice counting them (empty prediction = 1): {summary['dice_all']:.4f}"
        )
    print(f"written: {out}/per_case.csv, summary.json" + ("" if args.no_overlays else ", overlays/"))
    return summary
