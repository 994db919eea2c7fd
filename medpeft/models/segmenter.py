"""Encoder -> decoder segmentation network, and the factory that builds one from a timm model name.

The split follows segmentation_models_pytorch (``base/model.py``): the encoder reports its ``out_channels`` and
``reductions`` and the decoder is sized from them. PEFT adapters are injected into ``Segmenter.encoder`` only;
``Segmenter.decoder`` (decoder + 1x1 head) is always trained in full.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from medpeft.models.decoders import (
    DEFAULT_LINEAR_CHANNELS,
    DEFAULT_UNET_CHANNELS,
    DEFAULT_UNETR_CHANNELS,
    LinearDecoder,
    UNetDecoder,
    UNETRDecoder,
)
from medpeft.models.encoder import TimmEncoder
from medpeft.models.pretrained import load_pretrained_decoder, load_pretrained_encoder

__all__ = ["DECODERS", "Segmenter", "build_segmenter"]

_logger = logging.getLogger(__name__)

DECODERS = ("auto", "unetr", "unet", "linear")


class Segmenter(nn.Module):
    """Segmentation network: input normalisation, encoder, decoder (ending in a 1x1 head).

    Inputs are images scaled to [0, 1]; they are normalised here with the mean/std the encoder was
    pretrained with, stored as buffers so they follow ``.to(device)`` and are saved with the model.

    Args:
        encoder: Feature extractor returning NCHW maps.
        decoder: Module called as ``decoder(image, features)`` returning logits at the image's resolution.
    """

    def __init__(self, encoder: TimmEncoder, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.register_buffer("mean", torch.tensor(encoder.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(encoder.std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict per-pixel class logits.

        Args:
            x: Images in [0, 1], shape [B, in_channels, H, W].

        Returns:
            Logits, shape [B, num_classes, H, W].
        """
        x = (x - self.mean) / self.std
        features = self.encoder(x)
        return self.decoder(x, features)


def build_segmenter(
    encoder: str = "vit_tiny_patch16_224",
    pretrained: bool | str | Path = False,
    decoder: Literal["auto", "unetr", "unet", "linear"] = "auto",
    in_channels: int = 3,
    num_classes: int = 2,
    img_size: int = 224,
    decoder_channels: Sequence[int] | None = None,
    out_indices: Sequence[int] | None = None,
) -> Segmenter:
    """Build a :class:`Segmenter` from a timm encoder name.

    Args:
        encoder: timm model name; any backbone of :mod:`medpeft.models.families`.
        pretrained: ``False`` for random init, ``True`` for timm's hub weights, or a path to a timm-compatible
            ``.safetensors``/``.pth`` file (see :func:`~medpeft.models.pretrained.load_pretrained_encoder`); its
            ``decoder.*`` tensors, if any, initialise the decoder where shapes fit
            (:func:`~medpeft.models.pretrained.load_pretrained_decoder`).
        decoder: ``"unetr"``, ``"unet"``, ``"linear"`` (a light per-pixel head that never sees the image, for
            every family), or ``"auto"`` (the family's: UNETR for plain transformers, U-Net for hierarchical encoders).
        in_channels: Image channels.
        num_classes: Output classes (background included).
        img_size: Input side length in pixels (transformers are built for it).
        decoder_channels: Decoder stage widths, deepest first. Defaults to ``DEFAULT_UNETR_CHANNELS`` or
            ``DEFAULT_UNET_CHANNELS`` (``DEFAULT_LINEAR_CHANNELS``, one width, for ``"linear"``).
        out_indices: Encoder stages/blocks to decode; see :class:`~medpeft.models.encoder.TimmEncoder`.

    Returns:
        The network, in training mode, with every parameter trainable.

    Raises:
        ValueError: For an unknown decoder or encoder family, or a decoder that does not fit the encoder.
        PretrainedWeightsError: If requested pretrained weights cannot be loaded.
    """
    if decoder not in DECODERS:
        raise ValueError(f"Unknown decoder {decoder!r}; choose one of {list(DECODERS)}.")
    enc = TimmEncoder(encoder, in_channels=in_channels, img_size=img_size, out_indices=out_indices)
    report = load_pretrained_encoder(enc, pretrained)
    if pretrained is not False:
        _logger.info("Loaded %d pretrained encoder tensors into %s.", len(report["loaded"]), encoder)

    # "auto": equal-stride (plain transformer) maps need UNETR's learned upsampling; hierarchical ones suit a U-Net
    kind = enc.family.choose_decoder(enc.reductions) if decoder == "auto" else decoder
    if kind == "linear":
        dec: nn.Module = LinearDecoder(enc.out_channels, num_classes, decoder_channels or DEFAULT_LINEAR_CHANNELS)
    elif kind == "unetr":
        if len(set(enc.reductions)) != 1:
            raise ValueError(
                f"The UNETR decoder needs equal-stride features (plain ViT); {encoder} has strides {enc.reductions}. "
                "Use decoder='unet'."
            )
        dec = UNETRDecoder(
            enc.out_channels, enc.reductions[0], in_channels, num_classes, decoder_channels or DEFAULT_UNETR_CHANNELS
        )
        if img_size % dec.grid_stride:
            raise ValueError(
                f"The UNETR decoder of {encoder} (feature stride {enc.reductions[0]}, decoded at stride "
                f"{dec.grid_stride}) needs an image size that is a multiple of {dec.grid_stride}; got {img_size}."
            )
    else:
        if len(set(enc.reductions)) != len(enc.reductions):
            raise ValueError(
                f"The U-Net decoder needs features at distinct strides; {encoder} has strides {enc.reductions}. "
                "Use decoder='unetr'."
            )
        dec = UNetDecoder(enc.out_channels, enc.reductions, num_classes, decoder_channels or DEFAULT_UNET_CHANNELS)
    if not isinstance(pretrained, bool):
        load_pretrained_decoder(dec, pretrained)  # a whole pre-trained network's file also initialises the decoder
    return Segmenter(enc, dec)
