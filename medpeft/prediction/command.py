"""The command behind ``scripts/predict.py``: segment new images or volumes with a run or a task file.

Example:
    .. code-block:: bash

        python scripts/predict.py --task runs/demo_lora/20261130-151739/task.safetensors --input photos/ --out masks/
        python scripts/predict.py --run runs/demo_lora/20261130-151739 --input photo.jpg --out masks/

``--run`` rebuilds the run's network from its best checkpoint, ``--task`` from a task file alone (plus the
pretrained encoder file it names); both give the same masks. One PNG per input image, ``<out>/<image stem>.png``,
at the image's own size; one ``<out>/<stem>.nii.gz`` per NIfTI volume, on the input's voxel grid with its affine and
header (a network trained on ACDC or Synapse). An unreadable input is reported and skipped; the failures are listed
at the end and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from medpeft.cli import exit_with_error
from medpeft.data import CaseFileError
from medpeft.evaluation.checkpoint import find_run_checkpoint, load_trained_network
from medpeft.evaluation.postprocess import configured_min_component_size, remove_small_components
from medpeft.experiment import Config, ConfigError, load_config
from medpeft.experiment.task_file import TaskFileError, load_task, swap_task
from medpeft.prediction.images import IMAGE_SUFFIXES, load_network_input, predict_image, write_mask, write_overlay
from medpeft.prediction.volumes import NIFTI_SUFFIXES, nifti_stem, predict_nifti

__all__ = ["build_parser", "list_inputs", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``scripts/predict.py``."""
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description=(
            "Segment new images (PNG/JPEG) or volumes (NIfTI) with a trained run or a task file; writes one mask per "
            "input at its own size (PNG: 0/255 for binary tasks, class ids otherwise; NIfTI: class ids on the input's "
            "grid, affine and header) to --out. Exit status 1 if an input failed."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="a run directory of scripts/train.py (its best checkpoint)")
    source.add_argument(
        "--task",
        metavar="FILE",
        action="append",
        help=(
            "a task file (task.safetensors of a run); repeat it to run several tasks on one loaded encoder, each "
            "into <out>/<its run folder name>"
        ),
    )
    parser.add_argument(
        "--input", required=True, metavar="FILE_OR_DIR", help="an image or volume, or a folder of them"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the masks")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda or cuda:N")
    parser.add_argument("--overlays", action="store_true", help="also write <out>/overlays/<image>.png (2D images)")
    return parser


def list_inputs(path: Path) -> list[Path]:
    """The image files to segment: ``path`` itself, or the images directly inside the folder, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    suffixes = IMAGE_SUFFIXES + NIFTI_SUFFIXES
    files = sorted(p for p in path.iterdir() if p.name.lower().endswith(suffixes))
    if not files:
        raise FileNotFoundError(f"--input {path}: no {'/'.join(suffixes)} files in this folder")
    return files


def _task_name(path: Path) -> str:
    """Output folder of a task: its run folder's name for ``task.safetensors``, else the file's stem."""
    return path.parent.name if path.name == "task.safetensors" else path.name.removesuffix(".safetensors")


def _load_run(run: Path, device: torch.device) -> tuple[nn.Module, Config]:
    cfg = load_config(run / "config.yaml")
    return load_trained_network(cfg, find_run_checkpoint(run)).to(device), cfg


def _segment(net: nn.Module, cfg: Config, inputs: list[Path], out: Path, label: str, overlays: bool) -> list[str]:
    """Write one mask per input to ``out``; return the failures (one line each)."""
    failures: list[str] = []
    for path in tqdm(inputs, desc=label, unit="file"):
        try:
            if path.name.lower().endswith(NIFTI_SUFFIXES):
                predict_nifti(net, cfg, path, out / f"{nifti_stem(path)}.nii.gz")
                continue
            image, size = load_network_input(path, cfg.data.image_size, cfg.model.in_channels)
        except (CaseFileError, ValueError) as err:
            failures.append(str(err))
            continue
        mask = predict_image(net, image, size)
        mask = remove_small_components(
            torch.from_numpy(mask), cfg.model.num_classes, configured_min_component_size(cfg), cfg.data.image_size
        ).numpy()
        write_mask(mask, cfg.model.num_classes, out / f"{path.stem}.png")
        if overlays:
            write_overlay(path, mask, cfg.model.num_classes, out / "overlays" / f"{path.stem}.png")
    print(f"{len(inputs) - len(failures)} of {len(inputs)} masks written to {out}")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit status (0, or 1 when an input failed)."""
    args = build_parser().parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    out = Path(args.out)
    failures: list[str] = []
    try:
        inputs = list_inputs(Path(args.input))
        if args.run:
            net, cfg = _load_run(Path(args.run), device)
            failures += _segment(net, cfg, inputs, out, "predict", args.overlays)
        else:
            tasks = [Path(task) for task in args.task]
            net, cfg = load_task(tasks[0], device)
            for i, task in enumerate(tasks):
                if i > 0:
                    try:  # keep the loaded base encoder, copy in this task's decoder and adapters
                        cfg = swap_task(net, cfg, task)
                    except TaskFileError as err:
                        print(f"note: {err}; loading it on its own")
                        net, cfg = load_task(task, device)
                target = out / _task_name(task) if len(tasks) > 1 else out
                failures += _segment(net, cfg, inputs, target, _task_name(task), args.overlays)
    except (FileNotFoundError, ConfigError, TaskFileError, ValueError) as err:
        exit_with_error(str(err))
    if failures:
        print(f"{len(failures)} failed:\n" + "\n".join(f"  {failure}" for failure in failures), file=sys.stderr)
        return 1
    return 0
