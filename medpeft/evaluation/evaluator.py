"""Score a network on one split of the dataset its config names: per case, per class, then summarised.

What a "case" is follows the published protocols of each dataset:

* 2D datasets (ISIC 2018, BUSI, the demo): one image, scored at the training resolution ``S x S`` (the test images
  and masks resized as for training), distances in pixels of that grid; or, with ``resolution="native"`` (what the
  ISIC challenge and most papers score), at each image's own size: the logits are resized (bilinear) to the
  original mask's ``H x W`` before the argmax and compared with the mask as read from its file.
* 3D datasets (ACDC, Synapse; :data:`~medpeft.data.VOLUME_DATASETS`): one volume, predicted slice by slice
  (:func:`~medpeft.evaluation.inference.predict_volume`) and scored on the stacked volume at its native voxel grid,
  distances in mm from the file's spacing (voxels under ``protocol="transunet"``).

The split is built by the same code as training's (:func:`~medpeft.experiment.data.datamodule_from_config`), from the
config and, for a run, its ``split.json``, so it is the split the run trained and selected its checkpoint on, broken
files left out alike; the test split is never seen before this.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from medpeft.data import VOLUME_DATASETS, SegmentationDataset, dataset_info
from medpeft.data.volumes import VolumeDataset
from medpeft.evaluation.inference import predict_images, predict_volume
from medpeft.evaluation.postprocess import choose_min_component_size, remove_small_components
from medpeft.experiment.config import Config
from medpeft.experiment.data import datamodule_from_config
from medpeft.metrics import Protocol, case_scores, distance_unit, summarize_scores

__all__ = ["RESOLUTIONS", "CaseView", "EvaluationResult", "Resolution", "choose_postprocess", "evaluate_split"]

Resolution = Literal["train", "native"]
RESOLUTIONS: tuple[str, ...] = ("train", "native")


@dataclass
class CaseView:
    """One 2D view of a case for overlays: ``image`` float [H, W] in [0, 1], ``label`` / ``pred`` int [H, W] (for a
    volume, the slice with the most ground-truth foreground)."""

    image: torch.Tensor
    label: torch.Tensor
    pred: torch.Tensor


@dataclass
class EvaluationResult:
    """Per-case rows (``case``, ``class``, ``class_name``, ``dice``, ``iou``, ``hd95``, ``asd``, ``gt_voxels``,
    ``pred_voxels``), their :func:`~medpeft.metrics.summarize_scores` summary, and one view per case."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    views: dict[str, CaseView] = field(default_factory=dict)


def _native_case(dataset: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``[C, H, W]`` in ``[0, 1]`` and mask ``[H, W]`` of case ``index`` at the file's own size.

    The dataset's first transform is its loader (decoded image and mask, before any resize); a JPEG decoded at a
    reduced scale is brought to the mask's size for the overlays.
    """
    loaded = dataset.transform.transforms[0](dict(dataset.data[index]))
    label = torch.as_tensor(np.asarray(loaded["label"]))[0].long()
    image = torch.as_tensor(np.asarray(loaded["image"]), dtype=torch.float32) / 255.0
    if image.shape[-2:] != label.shape:
        image = F.interpolate(image[None], size=tuple(label.shape), mode="bilinear", align_corners=False)[0]
    return image, label


def _image_cases(
    net: nn.Module, dataset: SegmentationDataset, batch_size: int, resolution: Resolution = "train"
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, None, str]]:
    device = next(net.parameters()).device
    index = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        if resolution == "native":
            with torch.no_grad():
                logits = net(batch["image"].to(device)).float()
            for name, case_logits in zip(batch["name"], logits):
                image, label = _native_case(dataset, index)
                native = F.interpolate(
                    case_logits[None], size=tuple(label.shape), mode="bilinear", align_corners=False
                )
                index += 1
                yield name, image, label, native[0].argmax(dim=0).cpu(), None, "px"
            continue
        preds = predict_images(net, batch["image"].to(device)).cpu()
        for name, image, label, pred in zip(batch["name"], batch["image"], batch["label"], preds):
            yield name, image, label.reshape(pred.shape), pred, None, "px"


def _volume_cases(
    net: nn.Module, cfg: Config, volumes: VolumeDataset, batch_size: int
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, tuple[float, ...], str]]:
    for volume in volumes:
        pred = predict_volume(net, volume["image"], cfg.data.image_size, cfg.model.in_channels, batch_size)
        yield volume["name"], volume["image"], volume["label"], pred, tuple(volume["spacing"]), volume["spacing_unit"]


def _view(image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, is_volume: bool) -> CaseView:
    """2D: image [C, H, W] (shown as RGB or grayscale); volume: image [D, H, W], the slice with most foreground."""
    if is_volume:
        z = int((label > 0).flatten(1).sum(dim=1).argmax())
        return CaseView(image[z].float().clone(), label[z].clone(), pred[z].clone())
    shown = image.permute(1, 2, 0)[..., :3] if image.shape[0] > 1 else image[0]
    return CaseView(shown.float().clone(), label.clone(), pred.clone())


def _predicted_cases(
    net: nn.Module,
    cfg: Config,
    split: str,
    data_root: str | None,
    batch_size: int | None,
    resolution: Resolution,
    split_file: str | os.PathLike[str] | None,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, tuple[float, ...] | None, str]]:
    """``(name, image, label, pred, spacing, spacing unit)`` of every case of a split, the prediction raw (argmax)."""
    size = batch_size or cfg.data.batch_size
    data = datamodule_from_config(cfg, data_root, evaluation=True, split_file=split_file)
    data.setup()
    if cfg.data.dataset in VOLUME_DATASETS:
        return _volume_cases(net, cfg, data.volumes(split), size)
    return _image_cases(net, data.datasets[split], size, resolution)


def choose_postprocess(
    net: nn.Module,
    cfg: Config,
    data_root: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    split_file: str | os.PathLike[str] | None = None,
) -> tuple[int, dict[int, float]]:
    """``postprocess.min_component_size: auto``: the size that maximises Dice over all validation cases, chosen by
    :func:`~medpeft.evaluation.postprocess.choose_min_component_size` on the validation split scored as the test
    is (``data.test_resolution``); returns it and the validation Dice of every candidate size."""
    num_classes = dataset_info(cfg.data.dataset).num_classes
    cases = _predicted_cases(net, cfg, "val", data_root, batch_size, cfg.data.test_resolution, split_file)
    was_training = net.training
    net.eval()
    try:
        pairs = (
            (pred, label)
            for _, _, label, pred, _, _ in tqdm(
                cases, desc="choose postprocess on val", unit="case", disable=not progress, leave=False
            )
        )
        return choose_min_component_size(pairs, num_classes, cfg.data.image_size)
    finally:
        net.train(was_training)


def evaluate_split(
    net: nn.Module,
    cfg: Config,
    split: str = "test",
    protocol: Protocol = "symmetric",
    data_root: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    resolution: Resolution = "train",
    split_file: str | os.PathLike[str] | None = None,
    min_component_size: int | None = None,
) -> EvaluationResult:
    """Predict, post-process and score every case of one split.

    The split comes from :func:`~medpeft.experiment.data.datamodule_from_config`, the builder training uses (broken
    cases skipped as ``data.bad_cases`` says, the label budget on ``train``), without augmentation.

    Args:
        net: The trained segmenter (any device); evaluated in eval mode, its mode restored afterwards.
        cfg: The run's config: dataset, root, image size, split seed, fractions and options.
        split: ``"train"``, ``"val"`` or ``"test"``.
        protocol: Scoring protocol, see :mod:`medpeft.metrics.scores`.
        data_root: Overrides ``data.root`` (the data moved since training).
        batch_size: Images (2D) or slices (3D) per forward pass; defaults to ``data.batch_size``.
        progress: Show a progress bar on stderr.
        resolution: 2D datasets only: ``"train"`` scores at ``S x S``, ``"native"`` at each image's own size (see the
            module docstring). Volumes are always scored on their native voxel grid.
        split_file: The run's ``split.json``: score exactly the cases it lists for ``split`` (a
            :class:`~medpeft.data.SplitMismatchError` if the data no longer holds them there).
        min_component_size: Foreground components smaller than this (network pixels) are removed before scoring
            (:func:`~medpeft.evaluation.postprocess.remove_small_components`); ``None`` uses
            ``postprocess.min_component_size``, chosen on validation first if that is ``"auto"``.

    Returns:
        Rows in case order, the summary (with the ``min_component_size`` applied), and one view per case.
    """
    info = dataset_info(cfg.data.dataset)
    is_volume = cfg.data.dataset in VOLUME_DATASETS
    if min_component_size is None:
        min_component_size = cfg.postprocess.min_component_size
        if min_component_size == "auto":
            min_component_size = choose_postprocess(net, cfg, data_root, batch_size, progress, split_file)[0]
    cases = _predicted_cases(net, cfg, split, data_root, batch_size, resolution, split_file)
    unit = "px"
    rows: list[dict[str, Any]] = []
    views: dict[str, CaseView] = {}
    was_training = net.training
    net.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
            for name, image, label, pred, spacing, spacing_unit in tqdm(
                cases, desc=f"evaluate {split}", unit="case", disable=not progress, leave=False
            ):
                pred = remove_small_components(pred, info.num_classes, min_component_size, cfg.data.image_size)
                unit = distance_unit(protocol, spacing, spacing_unit)
                for row in case_scores(pred, label, info.num_classes, spacing, protocol):
                    c = int(row["class"])
                    class_name = info.class_names[c] if info.class_names else str(c)
                    rows.append({"case": name, "class": c, "class_name": class_name, **row})
                views[name] = _view(image, label, pred, is_volume)
    finally:
        net.train(was_training)
    summary = summarize_scores(rows, protocol, unit, info.class_names or None)
    summary.update(
        split=split,
        dataset=cfg.data.dataset,
        image_size=cfg.data.image_size,
        resolution="native" if is_volume else resolution,
        min_component_size=min_component_size,
    )
    return EvaluationResult(rows, summary, views)
