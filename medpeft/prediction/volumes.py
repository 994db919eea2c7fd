"""Segment 3D NIfTI volumes slice by slice, as evaluation does; the mask keeps the input's affine, header and shape.

The volume is read as ``[D, H, W]`` (:func:`~medpeft.data.volumes.read_nifti`), normalised as the training
dataset's volumes were (ACDC: per-volume 0.5-99.5 percentiles; Synapse: the abdominal CT window), segmented slice by
slice at the training resolution with logits resized back to each slice's own size
(:func:`~medpeft.evaluation.inference.predict_volume`), and written as uint8 class ids on the input's voxel grid.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from medpeft.data.volumes import percentile_normalise, read_nifti, window_normalise
from medpeft.evaluation.inference import predict_volume
from medpeft.evaluation.postprocess import configured_min_component_size, remove_small_components
from medpeft.experiment import Config
from medpeft.io import atomic_output

__all__ = ["NIFTI_SUFFIXES", "VOLUME_NORMALISERS", "nifti_stem", "predict_nifti"]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: How each volume dataset's images were brought to ``[0, 1]`` for training.
VOLUME_NORMALISERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "acdc": percentile_normalise,
    "synapse": window_normalise,
}


def nifti_stem(path: Path) -> str:
    """``case.nii.gz`` -> ``case``."""
    return path.name.removesuffix(".gz").removesuffix(".nii")


def predict_nifti(
    net: nn.Module, cfg: Config, path: str | os.PathLike[str], out: str | os.PathLike[str], batch_size: int = 16
) -> Path:
    """Segment the volume at ``path`` and write the mask to ``out`` (atomically); return ``out``.

    Raises:
        ValueError: The network was trained on a 2D dataset (no volume normalisation to apply).
        CaseFileError: The file is unreadable or not 3D.
    """
    normalise = VOLUME_NORMALISERS.get(cfg.data.dataset)
    if normalise is None:
        raise ValueError(
            f"{path}: a network trained on '{cfg.data.dataset}' segments 2D images; volumes need one trained on "
            f"{' or '.join(sorted(VOLUME_NORMALISERS))}"
        )
    volume, _ = read_nifti(path)  # [D, H, W]
    labels = predict_volume(
        net, torch.from_numpy(normalise(volume)), cfg.data.image_size, cfg.model.in_channels, batch_size
    )
    size = configured_min_component_size(cfg)
    labels = remove_small_components(labels, cfg.model.num_classes, size, cfg.data.image_size)
    source = nib.load(path)
    mask = labels.numpy().astype(np.uint8).transpose(2, 1, 0).reshape(source.shape)  # [D, H, W] -> the file's axes
    header = source.header.copy()
    header.set_data_dtype(np.uint8)
    result = type(source)(mask, source.affine, header=header)  # NIfTI-1 or -2, as the input
    result.header.set_slope_inter(1.0, 0.0)  # class ids as stored, whatever scaling the image had
    out = Path(out)
    suffix = ".nii.gz" if out.name.endswith(".gz") else ".nii"  # nibabel picks compression by the name
    with atomic_output(out) as temporary:
        named = temporary.with_name(temporary.name + suffix)
        nib.save(result, str(named))
        named.replace(temporary)
    return out
