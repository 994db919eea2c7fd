"""Normalisation tuning: train the affine parameters of the normalisation layers only.

For a normalisation layer ``y = gamma * (x - mu) / sigma + beta`` (LayerNorm, BatchNorm, GroupNorm, InstanceNorm;
``y = gamma * x / rms(x)`` for RMSNorm), ``gamma`` (``weight``) and ``beta`` (``bias``) train and everything else is
frozen. This is the "LN tuning" / "BN tuning" baseline of the PEFT literature (e.g. Basu et al., "Strong Baselines
for Parameter Efficient Few-Shot Fine-tuning", AAAI 2024; Frankle et al., "Training BatchNorm and Only BatchNorm",
ICLR 2021). Nothing is wrapped: the trained tensors are the network's own, so the network is the plain one at
initialisation, merging is a no-op, and the adapter file holds them by name.

Accepted layers: subclasses of torch's ``nn.LayerNorm``, ``nn.GroupNorm``, ``nn.RMSNorm`` and the BatchNorm /
InstanceNorm base (timm's ``LayerNorm2d``, ``BatchNormAct2d``, ``GroupNormAct`` are among them) and timm's own
``RmsNorm`` / ``SimpleNorm`` layers, with affine parameters; others and norms without affine (``elementwise_affine=
False``, ``affine=False``) are refused, or skipped under the default ``all`` preset. Which running statistics
BatchNorm uses is a separate matter, ``adapter.adapt_norm`` (default on).
Trainable numbers: ``2 * C`` per normalisation layer of ``C`` channels (``C`` for one without bias, RMSNorm).
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.layers import (
    RmsNorm,
    RmsNorm2d,
    RmsNorm2dFp32,
    RmsNormFp32,
    SimpleNorm,
    SimpleNorm2d,
    SimpleNorm2dFp32,
    SimpleNormFp32,
)
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from medpeft.adapters.base import register_adapter

__all__ = ["NORM_TYPES", "NormTuningConfig", "affine_parameter_names", "norm_refusal"]

#: The normalisation layer types whose affine parameters norm tuning trains (with their subclasses).
NORM_TYPES: tuple[type, ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    _NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d
    RmsNorm,
    RmsNormFp32,
    RmsNorm2d,
    RmsNorm2dFp32,
    SimpleNorm,
    SimpleNormFp32,
    SimpleNorm2d,
    SimpleNorm2dFp32,
)


@dataclass
class NormTuningConfig:
    """Normalisation tuning has no options: which layers train is set by the targets."""


def affine_parameter_names(module: nn.Module) -> list[str]:
    """Names of the affine parameters (``weight``, ``bias``) a normalisation layer holds itself."""
    return [name for name, _ in module.named_parameters(recurse=False) if name in ("weight", "bias")]


def norm_refusal(name: str, module: nn.Module) -> str | None:
    """Why ``module`` has no normalisation affine parameters to train (``None``: it has)."""
    if not isinstance(module, NORM_TYPES):
        return (
            f"{name!r}, a {type(module).__name__}; normalisation tuning trains the affine parameters of LayerNorm, "
            "BatchNorm, GroupNorm and RMSNorm layers only: name the norm layers (e.g. '*norm1'), or use the 'all' "
            "preset"
        )
    if not affine_parameter_names(module):
        return f"{name!r}, a {type(module).__name__} without affine parameters (nothing to train)"
    return None


@register_adapter(
    "norm",
    NormTuningConfig,
    size_knob=None,
    refuse=norm_refusal,
    default_targets=("all",),
    summary="normalisation layers' affine weight and bias only",
)
def apply_norm_tuning(
    root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: NormTuningConfig
) -> list[str]:
    """Change nothing; return the qualified names of the matched norm layers' affine parameters, which then train."""
    return [f"{name}.{affine}" for name, module, _pattern in matches for affine in affine_parameter_names(module)]
