"""Train-then-test orchestration behind ``scripts/train.py``.

One call of :func:`main` is one run: validate the config and the data, create the run directory, train with
Lightning, reload the best checkpoint, evaluate it on the held-out test split with
:func:`medpeft.evaluation.evaluate_split` (the code ``scripts/evaluate.py`` runs, so both give the same numbers)
and write ``metrics.json``. The run directory ``<output_dir>/<config stem>/<YYYYmmdd-HHMMSS>`` then holds::

    config.yaml           resolved config (re-runnable with --config)   written first
    split.json            the train/val/test case names                  before training
    checkpoints/*.ckpt    best (by val/dice) and last.ckpt               as training goes (--resume continues
                                                                         from last.ckpt: medpeft.training.resume)
    csv/metrics.csv       per-step and per-epoch logs (plus tensorboard/ event files)
    adapter.safetensors   adapter weights of the best checkpoint (PEFT methods only)   at the end
    task.safetensors      everything trained + how to rebuild it (medpeft.experiment.task_file)   at the end
    per_case.csv          test scores per case and class                               at the end, atomically
    summary.json          mean ± std per class and overall, definitions, exclusions    at the end, atomically
    overlays/*.png        best, median and worst test case                             at the end
    metrics.json          scores, parameter counts, GFLOPs, timing (written last)      at the end, atomically

so a crash loses nothing already done, and a ``metrics.json`` that exists is complete.

User errors that can be detected before training (invalid config, missing dataset or pretrained weights, a
dataset/model mismatch, adapter targets that match nothing) print one line to stderr and exit with status 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from medpeft.adapters import save_adapter
from medpeft.cli import exit_with_error
from medpeft.data import DatasetNotFoundError, SegmentationDataModule
from medpeft.evaluation.checkpoint import load_network_state
from medpeft.evaluation.evaluator import choose_postprocess, evaluate_split
from medpeft.evaluation.report import json_safe, write_evaluation
from medpeft.experiment.config import (
    Config,
    ConfigError,
    is_adapter_method,
    load_config,
    save_config,
    write_text_atomic,
)
from medpeft.experiment.data import datamodule_from_config
from medpeft.experiment.network import apply_finetuning, segmenter_from_config, size_facts
from medpeft.experiment.task_file import save_task
from medpeft.metrics import efficiency_figures
from medpeft.models import PretrainedWeightsError
from medpeft.training.module import SegmentationModule
from medpeft.training.resume import RunCheckpoint, checkpoint_step, find_resume_checkpoint, restore_log_history
from medpeft.training.throughput import TrainingThroughput

__all__ = ["build_parser", "build_trainer", "collect_metrics", "main", "make_run_dir", "trainer_options"]

# Lightning's DDP launcher re-runs this script once per extra device; those processes must reuse rank 0's run
# directory instead of creating their own timestamped one. Children inherit the environment, so rank 0 leaves the
# path here before the launcher starts them.
_RUN_DIR_ENV = "MEDPEFT_RUN_DIR"


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``scripts/train.py``."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=(
            "Fine-tune a segmentation model (full, decoder-only, LoRA, TRM or tCURLoRA) as described by a YAML "
            "config, then evaluate the best checkpoint on the held-out test split. Results go to "
            "<output_dir>/<config stem>/<timestamp>/ (config.yaml, split.json, checkpoints/, logs, metrics.json, "
            "adapter.safetensors). Exits with status 2 on a config or data error."
        ),
    )
    parser.add_argument("--config", metavar="FILE", help="YAML experiment config (see configs/).")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help=(
            "continue a killed run in its own directory from checkpoints/last.ckpt, with its own config.yaml "
            "(no --config or --set); a finished run (metrics.json) is left as it is"
        ),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help=(
            "override a config value by its dotted key, e.g. --set adapter.rank=8 trainer.max_epochs=2 "
            "optim.lr=1e-3 adapter.blocks=[0,1]; values are parsed as YAML. Repeatable."
        ),
    )
    return parser


def _resume_dir(args: argparse.Namespace) -> Path | None:
    """The run directory of ``--resume`` (checked), or ``None``; exits with status 2 on a bad combination."""
    if args.resume is None:
        if args.config is None:
            exit_with_error("give --config FILE, or --resume RUN_DIR to continue a run")
        return None
    if args.config is not None or args.overrides:
        exit_with_error("--resume continues a run with its own config.yaml: drop --config and --set")
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        exit_with_error(f"--resume {run_dir}: no config.yaml there; give a run directory made by scripts/train.py")
    return run_dir


def _check_same_split(datamodule: SegmentationDataModule, run_dir: Path) -> None:
    """Exit with status 2 if the data no longer split as when the run started (files added or removed)."""
    stored = json.loads((run_dir / "split.json").read_text())
    for name, cases in datamodule.split.items():
        if sorted(stored.get(name, [])) != sorted(cases):
            exit_with_error(
                f"--resume {run_dir}: the {name} split differs from its split.json (the dataset changed since the run "
                "started); resuming would train and select on other images"
            )


def make_run_dir(output_dir: str | os.PathLike[str], name: str) -> Path:
    """Create and return ``<output_dir>/<name>/<YYYYmmdd-HHMMSS>``, adding ``-1``, ``-2``, ... if it exists.

    Under a multi-task SLURM job (``srun``, ``SLURM_NTASKS > 1``) the folder is ``<output_dir>/<name>/slurm-<job id>``
    for every task, so that all ranks of the job write to one run directory.
    """
    inherited = os.environ.get(_RUN_DIR_ENV)
    if inherited and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return Path(inherited)
    parent = Path(output_dir) / name
    parent.mkdir(parents=True, exist_ok=True)
    job = os.environ.get("SLURM_JOB_ID")
    if job and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # srun starts every task itself (no launcher hands rank 0's folder on), so the job id names the folder
        run_dir = parent / f"slurm-{job}"
        run_dir.mkdir(exist_ok=True)
        os.environ[_RUN_DIR_ENV] = str(run_dir)
        return run_dir
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        run_dir = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir()  # exist_ok=False: two runs started in the same second never share a directory
        except FileExistsError:
            continue
        os.environ[_RUN_DIR_ENV] = str(run_dir)
        return run_dir
    raise FileExistsError(f"could not create a fresh run directory under {parent}")


def trainer_options(trainer: dict[str, Any]) -> dict[str, Any]:
    """Return the user's ``trainer`` section completed with this project's defaults.

    - ``precision="16-mixed"`` when the accelerator resolves to a CUDA GPU and the user set no precision:
      mixed precision roughly halves activation memory and speeds up ViTs on tensor cores, and the Dice/argmax
      metrics are insensitive to it. Set ``trainer.precision: 32-true`` to opt out.
    - ``enable_model_summary=False`` unless set: parameter counts are printed by the module and GFLOPs go to
      ``metrics.json``.
    - ``deterministic="warn"`` unless set: deterministic algorithms wherever PyTorch has them, and a warning
      (not an error, as ``True`` would give) for ops that have none, e.g. some CUDA interpolation backwards.
    """
    options = dict(trainer)
    options.setdefault("deterministic", "warn")
    # Lightning's summary table would show "FLOPs 0" (it needs an example input); main() prints parameter counts
    # and metrics.json holds the measured GFLOPs instead.
    options.setdefault("enable_model_summary", False)
    accelerator = str(options.get("accelerator", "auto")).lower()
    if "precision" not in options and accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        options["precision"] = "16-mixed"
    return options


def _build_datamodule(cfg: Config) -> SegmentationDataModule:
    """Build the data module and run its setup now, so a missing dataset is reported before the model is built."""
    data = cfg.data
    try:
        datamodule = datamodule_from_config(cfg)
    except (TypeError, ValueError) as err:  # unregistered dataset, or a data.options key it does not take
        exit_with_error(f"invalid 'data' section: {err}")
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
    except DatasetNotFoundError as err:
        exit_with_error(str(err))
    for skipped in datamodule.skipped_cases:
        print(f"skipped {skipped['split']} case {skipped['case']}: {skipped['file']}: {skipped['problem']}")
    for key, found in (("num_classes", datamodule.num_classes), ("in_channels", datamodule.in_channels)):
        configured = getattr(cfg.model, key)
        if found != configured:
            exit_with_error(
                f"'model.{key}' is {configured} but dataset '{data.dataset}' has {found}; set model.{key}: {found}"
            )
    return datamodule


def build_trainer(cfg: Config, run_dir: Path) -> tuple[pl.Trainer, RunCheckpoint, TrainingThroughput]:
    """Return the Trainer of a run, its checkpoint callback and its speed meter.

    :class:`~medpeft.training.resume.RunCheckpoint` keeps the best checkpoint by ``val/dice`` and ``last.ckpt``
    (after every validation, every ``checkpoint_every_n_steps`` optimizer steps, at the end of training and when
    ``fit`` raises). :class:`~medpeft.training.throughput.TrainingThroughput` comes first in the callbacks and the
    checkpoint last (Lightning moves every ``ModelCheckpoint`` to the end), so no checkpoint write falls inside a
    timed step.

    Logs go to ``run_dir/csv`` and ``run_dir/tensorboard``; gradients are clipped by norm at ``optim.grad_clip``;
    the ``trainer`` section is completed by :func:`trainer_options`.
    """
    checkpoint = RunCheckpoint(run_dir / "checkpoints", cfg.checkpoint_every_n_steps)
    throughput = TrainingThroughput()
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        logger=[
            CSVLogger(save_dir=run_dir, name="csv", version=""),
            TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""),
        ],
        callbacks=[throughput, LearningRateMonitor("step"), checkpoint],
        gradient_clip_val=cfg.optim.grad_clip or None,
        **trainer_options(cfg.trainer),
    )
    return trainer, checkpoint, throughput


def collect_metrics(
    cfg: Config,
    net: nn.Module,
    summary: dict[str, Any],
    run_dir: Path,
    n_adapted: int,
    best: str | None,
    train_seconds: float,
    throughput: TrainingThroughput,
) -> dict[str, Any]:
    """Assemble ``metrics.json``: the run's identity, the held-out scores (overall means and stds, per class, what
    was excluded; from :func:`~medpeft.metrics.summarize_scores`), the efficiency figures
    (:func:`~medpeft.metrics.efficiency_figures`) and run facts. Paths are relative to ``run_dir``."""
    overall = summary["overall"]
    adapter_file = run_dir / "adapter.safetensors"
    image_shape = (1, cfg.model.in_channels, cfg.data.image_size, cfg.data.image_size)
    return json_safe(
        {
            "name": cfg.label,
            "method": cfg.adapter.method,
            "encoder": cfg.model.encoder,
            "dataset": cfg.data.dataset,
            "seed": cfg.seed,
            "split": summary["split"],
            "protocol": summary["protocol"],
            "distance_unit": summary["distance_unit"],
            **{metric: overall[metric]["mean"] for metric in overall},
            "std": {metric: overall[metric]["std"] for metric in overall},
            "n_excluded": {metric: overall[metric]["n_excluded"] for metric in overall},
            "dice_all": summary["dice_all"],
            "empty_target": summary["empty_target"],
            "per_class": summary["per_class"],
            "n_test_cases": summary["n_cases"],
            **efficiency_figures(net, image_shape, adapter_file if adapter_file.is_file() else None),
            "adapted_modules": n_adapted,
            **size_facts(net),
            "image_size": cfg.data.image_size,
            "best_checkpoint": str(Path(best).resolve().relative_to(run_dir.resolve())) if best else None,
            "train_seconds": round(train_seconds, 2),
            "train_images_per_second": throughput.images_per_second,
            "train_peak_memory_mb": throughput.peak_memory_mb,
        }
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> Path:
    """Run one experiment: ``train.py --config FILE [--set KEY=VALUE ...]``.

    Args:
        argv: Command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The run directory.

    Raises:
        SystemExit: With status 2 on bad command-line arguments and on a config, dataset, pretrained-weights,
            model or adapter-target error, reported on stderr without a traceback (see :func:`medpeft.cli.exit_with_error`);
            the run directory is created only after these checks pass.
    """
    args = build_parser().parse_args(argv)
    resume_dir = _resume_dir(args)
    if resume_dir is not None and (resume_dir / "metrics.json").is_file():
        print(f"{resume_dir} already finished (metrics.json exists); nothing to resume")
        return resume_dir
    config_path = resume_dir / "config.yaml" if resume_dir is not None else args.config
    try:
        cfg = load_config(config_path, args.overrides)
    except ConfigError as err:
        exit_with_error(str(err))
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = _build_datamodule(cfg)
    try:
        net = segmenter_from_config(cfg)
    except PretrainedWeightsError as err:
        exit_with_error(str(err))
    except ValueError as err:  # unknown decoder or encoder family, or a decoder that does not fit the encoder
        exit_with_error(f"invalid 'model' section: {err}")
    try:
        adapted = apply_finetuning(net, cfg.adapter)
    except ValueError as err:
        exit_with_error(f"adapter '{cfg.adapter.method}' does not fit encoder '{cfg.model.encoder}': {err}")

    if resume_dir is None:
        run_dir = make_run_dir(cfg.output_dir, Path(args.config).stem)
        print(f"run directory: {run_dir}")
        save_config(cfg, run_dir / "config.yaml")
        datamodule.save_split(run_dir / "split.json")
        if datamodule.skipped_cases:
            write_text_atomic(run_dir / "skipped_cases.json", json.dumps(datamodule.skipped_cases, indent=2) + "\n")
    else:
        run_dir = resume_dir
        os.environ[_RUN_DIR_ENV] = str(run_dir)  # DDP children resume in it too
        _check_same_split(datamodule, run_dir)
    if adapted:
        print(f"{cfg.adapter.method}: adapters on {len(adapted)} encoder layers ({adapted[0]} ... {adapted[-1]})")

    module = SegmentationModule(
        net,
        num_classes=cfg.model.num_classes,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=cfg.optim.warmup_steps,
        min_lr_ratio=cfg.optim.min_lr_ratio,
        reg_weight=cfg.adapter.reg_weight,
        encoder_lr=cfg.optim.encoder_lr,
        lora_b_lr_ratio=cfg.adapter.lora_plus_ratio if cfg.adapter.method == "lora" else 1.0,
        nonfinite_loss=cfg.optim.nonfinite_loss,
        freeze_encoder_norm=not cfg.adapter.adapt_norm,
        loss_options=cfg.loss.dice_ce_options(),
    )
    trainer, checkpoint, throughput = build_trainer(cfg, run_dir)

    resume_from = find_resume_checkpoint(run_dir) if resume_dir is not None else None
    resumed_step = None if resume_from is None else checkpoint_step(resume_from)
    if resume_from is not None:
        # only rank 0 writes logs; another rank rewriting metrics.csv could race with it
        kept = restore_log_history(trainer.loggers[0], before_step=resumed_step) if rank_zero_only.rank == 0 else 0
        print(f"resuming {run_dir} from optimizer step {resumed_step} ({resume_from}; {kept} log rows kept)")
    elif resume_dir is not None:
        print(f"{run_dir} has no checkpoint yet: training it from the start")

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    train_seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return run_dir

    # The best checkpoint by val/dice; last.ckpt if validation never ran; the final weights if checkpointing is
    # off (fast_dev_run). The test split is scored once, here, with the code scripts/evaluate.py uses.
    last = find_resume_checkpoint(run_dir)
    best = checkpoint.best_model_path or (str(last) if last else None)
    if best:
        load_network_state(net, best)
    net.to(trainer.strategy.root_device)
    split_file = run_dir / "split.json"  # the split training used (broken cases skipped there stay out here too)
    val_dice_by_size = None
    if cfg.postprocess.min_component_size == "auto":  # chosen on validation, then part of the resolved config
        size, val_dice_by_size = choose_postprocess(net, cfg, split_file=split_file)
        cfg.postprocess.min_component_size = size
        save_config(cfg, run_dir / "config.yaml")
        print(f"postprocess.min_component_size: {size} (validation Dice over all cases {val_dice_by_size[size]:.4f})")
    if is_adapter_method(cfg.adapter.method):
        save_adapter(net.encoder, run_dir / "adapter.safetensors", norm_stats=cfg.adapter.adapt_norm)
    task_file_bytes = save_task(net, cfg, run_dir / "task.safetensors")
    result = evaluate_split(net, cfg, split="test", resolution=cfg.data.test_resolution, split_file=split_file)
    write_evaluation(result, run_dir, cfg.model.num_classes)
    metrics = collect_metrics(cfg, net, result.summary, run_dir, len(adapted), best, train_seconds, throughput)
    metrics["best_val_dice"] = None if checkpoint.best_model_score is None else float(checkpoint.best_model_score)
    metrics["min_component_size"] = cfg.postprocess.min_component_size
    metrics["val_dice_all_by_min_component_size"] = val_dice_by_size
    metrics["resumed_from_step"] = resumed_step  # last.ckpt now holds the final state
    metrics["task_file_bytes"] = task_file_bytes
    metrics["skipped_cases"] = len(datamodule.skipped_cases)  # data.bad_cases: skip; listed in skipped_cases.json
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    unit = metrics["distance_unit"]
    print(f"run directory: {run_dir}")
    print(
        f"test ({metrics['n_test_cases']} cases): dice {_fmt(metrics['dice'])} | iou {_fmt(metrics['iou'])} | "
        f"hd95 {_fmt(metrics['hd95'])} {unit} | asd {_fmt(metrics['asd'])} {unit}"
    )
    empty = metrics["empty_target"]
    if empty["n"]:
        print(
            f"cases without a class: {empty['n']}, with a false positive: {empty['false_positives']} | "
            f"dice counting them (empty prediction = 1): {_fmt(metrics['dice_all'])}"
        )
    print(
        f"params: trainable {metrics['trainable_params']:,d} of {metrics['total_params']:,d} | "
        f"adapter {metrics['adapter_params']:,d} ({100 * metrics['adapter_fraction_of_encoder']:.3f}% of encoder) | "
        f"{metrics['gflops']:.3f} GFLOPs/image"
    )
    return run_dir
