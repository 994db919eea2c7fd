"""Multi-scale feature encoder wrapping a timm backbone.

Any timm backbone that timm's ``features_only`` (or, for plain transformers, ``forward_intermediates``) supports
can be an encoder. What differs between architectures (image-size dependent kwargs, default blocks, how features
are read, the decoder ``auto`` picks, what the presets mean) lives in one file per family under
:mod:`medpeft.models.families`: ViT / DeiT / DINOv2, EVA / BEiT, SAM, Swin, ResNet, ConvNeXt, EfficientNet, and a
generic fallback for the rest.

Module names inside the encoder are ``model.`` followed by timm's own names, so adapters can target them:
``model.blocks.3.attn.qkv`` (ViT), ``model.layers_0.blocks.1.attn.qkv`` (Swin, whose ``layers.0`` timm's
``features_only`` wrapper flattens to ``layers_0``), ``model.layer1.0.conv1`` (ResNet),
``model.stages_0.blocks.0.mlp.fc1`` (ConvNeXt), ``model.blocks.1.0.conv_pw`` (EfficientNet). For plain
transformers the module that timm's ``FeatureGetterNet`` wraps is held directly, so the names carry no extra
``model.``.

Reference: timm ``models/_features.py`` (``FeatureListNet``, ``FeatureGetterNet``) and
segmentation_models_pytorch ``encoders/timm_universal.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medpeft.models.families import EncoderFamily, family_for

__all__ = ["TimmEncoder"]


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
        name: timm model name (any backbone with feature extraction; see :mod:`medpeft.models.families`).
        in_channels: Number of input image channels.
        img_size: Input side length in pixels. Transformers are built for this size (position embeddings,
            attention windows and relative positions depend on it); convolutional networks accept any size and
            only record it.
        out_indices: Which stages/blocks to return. Defaults to four evenly spaced blocks ending at the last
            one for plain transformers (``(2, 5, 8, 11)`` for 12 blocks) and to timm's default (all stages)
            otherwise.

    Attributes:
        name: The timm model name.
        family: The :class:`~medpeft.models.families.EncoderFamily` of the architecture.
        in_channels: Number of input channels.
        img_size: Input side length the encoder was built for.
        out_indices: The stage/block indices returned, as normalised by timm.
        out_channels: Channels of each returned feature map.
        reductions: Stride of each returned feature map w.r.t. the input (all 16 for ViT-B/16).
        mean: Per-channel input mean of the pretrained weights (length ``in_channels``).
        std: Per-channel input std of the pretrained weights (length ``in_channels``).
        timm_kwargs: Architecture kwargs given to ``timm.create_model`` (besides ``features_only`` and
            ``out_indices``); :mod:`medpeft.models.pretrained` builds the matching plain timm model with them.
        model: The timm module holding the weights.

    Raises:
        UnsupportedEncoderError: If timm has no such model or cannot extract multi-scale features from it.
    """

    def __init__(self, name: str, in_channels: int, img_size: int, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        self.name = name
        self.family: EncoderFamily = family_for(name)
        self.in_channels = in_channels
        self.img_size = img_size
        self.timm_kwargs: dict[str, Any] = {"in_chans": in_channels, **self.family.timm_kwargs(name, img_size)}
        built = self.family.build(name, img_size, out_indices, self.timm_kwargs)
        self.model: nn.Module = built.model
        self.out_channels: list[int] = built.out_channels
        self.reductions: list[int] = built.reductions
        self.out_indices: tuple[int, ...] = built.out_indices
        self._intermediates = built.intermediates

        cfg = self.model.pretrained_cfg
        self.mean = _channel_stats(cfg.get("mean", (0.5, 0.5, 0.5)), in_channels)
        self.std = _channel_stats(cfg.get("std", (0.5, 0.5, 0.5)), in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Extract multi-scale features.

        Args:
            x: Normalised images, shape [B, in_channels, H, W].

        Returns:
            One tensor per ``out_indices`` entry, shape [B, out_channels[i], H / reductions[i], W / reductions[i]]
            (rounded as the backbone rounds).
        """
        return self.family.features(self.model, x, self.out_indices, self._intermediates)
