"""Multi-scale feature encoder wrapping a timm backbone created with ``features_only=True``.

Three families are supported, chosen by the timm model-name prefix:

* ``vit_*``: plain Vision Transformer (Dosovitskiy et al., 2021). Every block outputs tokens on the same
  patch grid, so all feature maps have stride 16 (the patch size) and equal channel counts; the decoder
  must do all the upsampling itself (see :class:`~medpeft.models.decoders.UNETRDecoder`).
* ``swin_*``: Swin Transformer (Liu et al., 2021), hierarchical, strides 4, 8, 16, 32. timm returns its
  features channels-last (NHWC); :meth:`TimmEncoder.forward` permutes them to NCHW in one place.
* ``resnet*``: ResNet (He et al., 2016), hierarchical, strides 2, 4, 8, 16, 32.

Module names inside the encoder are ``model.`` followed by timm's own names, so adapters can target them:
``model.blocks.3.attn.qkv`` (ViT), ``model.layers_0.blocks.1.attn.qkv`` (Swin, whose ``layers.0`` timm's
``features_only`` wrapper flattens to ``layers_0``) and ``model.layer1.0.conv1`` (ResNet). For ViT the
module that timm's ``FeatureGetterNet`` wraps is held directly, so the names carry no extra ``model.``.

Reference: timm ``models/_features.py`` (``FeatureListNet``, ``FeatureGetterNet``) and
segmentation_models_pytorch ``encoders/timm_universal.py``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.models._features import FeatureGetterNet
from torch import nn

__all__ = ["SUPPORTED_FAMILIES", "TimmEncoder", "encoder_family"]

# name prefix -> family; the order matters only for error messages
SUPPORTED_FAMILIES: dict[str, str] = {"vit_": "vit", "swin_": "swin", "resnet": "resnet"}

# all timm Swin variants have four stages; window sizes are chosen against the third one (see _swin_window_size)
_SWIN_STAGES = 4


def encoder_family(name: str) -> str:
    """Return the family (``"vit"``, ``"swin"`` or ``"resnet"``) of a timm model name.

    Args:
        name: timm model name, optionally with a pretrained tag (``"vit_tiny_patch16_224.augreg_in21k"``).

    Raises:
        ValueError: If the name belongs to none of the supported families.
    """
    for prefix, family in SUPPORTED_FAMILIES.items():
        if name.startswith(prefix):
            return family
    supported = ", ".join(f"{p}*" for p in SUPPORTED_FAMILIES)
    raise ValueError(f"Unsupported encoder {name!r}; supported timm families: {supported}.")


def _swin_window_size(name: str, img_size: int) -> int:
    """Pick a Swin window size that tiles the patch grid of ``img_size`` without padding.

    timm 1.0.31 accepts any ``img_size`` for Swin, but when the window does not divide a stage's grid it pads
    the tokens with zeros *inside* the attention windows, and those padded tokens are attended to unmasked.
    Choosing a window that divides the third stage's grid (and hence the first two) avoids that; the fourth
    stage's grid is usually smaller than the window, where timm shrinks the window to the grid. Among the
    divisors the one closest to the pretrained window is taken (ties to the larger), so 224 px keeps 7; the
    relative-position bias tables are resized on load by timm's ``checkpoint_filter_fn``.

    Args:
        name: timm Swin model name; the pretrained window and patch size are read from it (``window7``,
            ``patch4``), defaulting to 7 and 4.
        img_size: Input side length in pixels.

    Returns:
        The window size (square) to pass to timm.
    """
    ref = int(m.group(1)) if (m := re.search(r"window(\d+)", name)) else 7
    patch = int(m.group(1)) if (m := re.search(r"patch(\d+)", name)) else 4
    stage3_grid = max(1, img_size // patch // 2 ** (_SWIN_STAGES - 2))
    divisors = [d for d in range(1, stage3_grid + 1) if stage3_grid % d == 0]
    return min(divisors, key=lambda d: (abs(d - ref), -d))


def _default_vit_out_indices(depth: int, n: int = 4) -> tuple[int, ...]:
    """``n`` evenly spaced block indices ending at the last block, e.g. (2, 5, 8, 11) for 12 blocks."""
    return tuple(round((i + 1) * depth / n) - 1 for i in range(n))


def _channel_stats(values: Sequence[float], in_channels: int) -> list[float]:
    """Per-channel normalisation statistics for ``in_channels`` inputs.

    ImageNet statistics are given for RGB; for any other channel count (e.g. one-channel CT/MRI) their mean is
    used for every channel, matching timm's ``adapt_input_conv`` which sums/repeats the RGB filters.
    """
    values = [float(v) for v in values]
    if len(values) == in_channels:
        return values
    return [sum(values) / len(values)] * in_channels


class TimmEncoder(nn.Module):
    """A timm backbone that returns a list of NCHW feature maps.

    Args:
        name: timm model name of a supported family (``vit_*``, ``swin_*``, ``resnet*``).
        in_channels: Number of input image channels.
        img_size: Input side length in pixels. ViT and Swin are built for this size (position embeddings and
            attention windows depend on it; see :func:`_swin_window_size` for the Swin window choice); ResNet
            accepts any size and only records it.
        out_indices: Which stages/blocks to return. Defaults to four evenly spaced blocks ending at the last
            one for ViT (``(2, 5, 8, 11)`` for 12 blocks) and to timm's default (all stages) otherwise.

    Attributes:
        name: The timm model name.
        family: ``"vit"``, ``"swin"`` or ``"resnet"``.
        in_channels: Number of input channels.
        img_size: Input side length the encoder was built for.
        out_indices: The stage/block indices returned, as normalised by timm.
        out_channels: Channels of each returned feature map.
        reductions: Stride of each returned feature map w.r.t. the input (all 16 for ViT).
        mean: Per-channel input mean of the pretrained weights (length ``in_channels``).
        std: Per-channel input std of the pretrained weights (length ``in_channels``).
        timm_kwargs: Architecture kwargs given to ``timm.create_model`` (besides ``features_only`` and
            ``out_indices``); :mod:`medpeft.models.pretrained` builds the matching plain timm model with them.
        model: The timm module holding the weights.

    Raises:
        ValueError: If ``name`` is not of a supported family.
    """

    def __init__(self, name: str, in_channels: int, img_size: int, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        self.name = name
        self.family = encoder_family(name)
        self.in_channels = in_channels
        self.img_size = img_size
        self.timm_kwargs: dict[str, Any] = {"in_chans": in_channels}
        if self.family in ("vit", "swin"):
            self.timm_kwargs["img_size"] = img_size
        if self.family == "swin":
            self.timm_kwargs["window_size"] = _swin_window_size(name, img_size)
        if self.family == "resnet":
            # timm zero-initialises the last BatchNorm of every residual block, so a randomly initialised
            # ResNet starts with every residual branch switched off (and adapters on its convs get no gradient).
            # torchvision's init keeps them on; on BUSI from scratch timm's cost 0.07 validation Dice in 15 epochs
            # (docs/results.md). Pre-trained weights overwrite either init.
            self.timm_kwargs["zero_init_last"] = False
        if out_indices is None and self.family == "vit":
            out_indices = _default_vit_out_indices(self._vit_depth())

        features = timm.create_model(
            name,
            pretrained=False,
            features_only=True,
            out_indices=tuple(out_indices) if out_indices is not None else None,
            **self.timm_kwargs,
        )
        self.out_channels: list[int] = list(features.feature_info.channels())
        self.reductions: list[int] = list(features.feature_info.reduction())
        self.out_indices: tuple[int, ...] = tuple(features.feature_info.out_indices)
        self._nhwc = str(getattr(features, "output_fmt", "NCHW")).endswith("NHWC")
        # FeatureGetterNet only calls model.forward_intermediates(); hold the ViT itself so its module names
        # are model.blocks.N... rather than model.model.blocks.N...
        self.model: nn.Module = features.model if isinstance(features, FeatureGetterNet) else features

        cfg = self.model.pretrained_cfg
        self.mean = _channel_stats(cfg.get("mean", (0.5, 0.5, 0.5)), in_channels)
        self.std = _channel_stats(cfg.get("std", (0.5, 0.5, 0.5)), in_channels)

    def _vit_depth(self) -> int:
        """Number of transformer blocks, read from a weightless copy built on the meta device."""
        with torch.device("meta"):
            plain = timm.create_model(self.name, pretrained=False, **self.timm_kwargs)
        return len(plain.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Extract multi-scale features.

        Args:
            x: Normalised images, shape [B, in_channels, H, W].

        Returns:
            One tensor per ``out_indices`` entry, shape [B, out_channels[i], H / reductions[i], W / reductions[i]]
            (rounded as the backbone rounds).
        """
        if self.family == "vit":
            features = self.model.forward_intermediates(
                x, indices=self.out_indices, norm=False, output_fmt="NCHW", intermediates_only=True
            )
        else:
            features = self.model(x)
        if self._nhwc:  # Swin: [B, h, w, C] -> [B, C, h, w]
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        return features
