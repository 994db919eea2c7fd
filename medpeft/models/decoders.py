"""Segmentation decoders that turn encoder feature maps into per-pixel class logits.

* :class:`UNETRDecoder`: for plain ViT encoders, whose feature maps all share one stride (16). Follows UNETR
  (Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", WACV 2022), in 2D: the
  deepest map is upsampled step by step, and each shallower map is brought to its own stage's resolution by
  transposed convolutions before being fused; a shallow conv stem on the image gives full-resolution skip
  detail that 16-pixel tokens cannot carry, so small structures survive.
* :class:`UNetDecoder`: for hierarchical encoders (Swin, ResNet). A thin wrapper around
  segmentation_models_pytorch's ``UnetDecoder`` (Ronneberger et al., 2015) plus a 1x1 head.
* :class:`LinearDecoder`: a light head for every family, after SegFormer's all-MLP decoder (Xie et al.,
  NeurIPS 2021): per-pixel linear maps of the encoder's features, fused and upsampled bilinearly. It never sees
  the image, so the segmentation is only as good as the encoder's features: the usual setting for comparing
  encoder adaptations (and the embedded demo's, see ``configs/demo_*.yaml``).

All take ``(image, features)`` so that the stem (UNETR) and the output size come from the image, and all end in a
1x1 convolution to ``num_classes`` logits at the input resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder as SmpUnetDecoder
from torch import nn

__all__ = [
    "DEFAULT_LINEAR_CHANNELS",
    "DEFAULT_UNETR_CHANNELS",
    "DEFAULT_UNET_CHANNELS",
    "ConvBlock",
    "LinearDecoder",
    "UNETRDecoder",
    "UNetDecoder",
]

# Small on purpose: the demo trains on 2 CPU cores. With vit_tiny (192 channels) UNETR has ~1.2 M parameters;
# UNETR's paper uses 16 * (8, 4, 2, 1) = (128, 64, 32, 16) too, with a 768-channel ViT-B.
DEFAULT_UNETR_CHANNELS: tuple[int, ...] = (128, 64, 32, 16)
# smp's default is (256, 128, 64, 32, 16); halving the deep stages keeps resnet18/swin_tiny decoders < 2 M params.
DEFAULT_UNET_CHANNELS: tuple[int, ...] = (128, 64, 32, 16, 16)
# One width: every feature map is projected to it, and the fused map has it too (SegFormer-B0 uses 256).
DEFAULT_LINEAR_CHANNELS: tuple[int, ...] = (64,)


def _log2_exact(value: int, what: str) -> int:
    """``log2(value)`` for a power of two, else a ValueError naming ``what``."""
    n = round(math.log2(value)) if value > 0 else -1
    if n < 1 or 2**n != value:
        raise ValueError(f"{what} must be a power of two >= 2, got {value}.")
    return n


def _nearest_power_of_two_exponent(value: int) -> int:
    """``n >= 1`` with ``2**n`` nearest to ``value`` (ties to the larger): 4 for a patch stride of 14."""
    if value < 2:
        raise ValueError(f"UNETR feature stride must be >= 2, got {value}.")
    return max(1, math.floor(math.log2(value) + 0.5))


class ConvBlock(nn.Sequential):
    """``n`` x (3x3 conv -> BatchNorm -> ReLU); keeps the spatial size.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        n: Number of conv layers.
    """

    def __init__(self, in_channels: int, out_channels: int, n: int = 2) -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            # no conv bias: BatchNorm's shift makes it redundant
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


def _upsample2x(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """Learned x2 upsampling: [B, in, h, w] -> [B, out, 2h, 2w]."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)


class _SkipProjection(nn.Sequential):
    """Brings an equal-stride ViT map to stride ``reduction / 2**steps`` (UNETR's deconvolution skip branch).

    Each step is a x2 transposed conv followed by one conv block, as in UNETR.
    """

    def __init__(self, in_channels: int, out_channels: int, steps: int) -> None:
        layers: list[nn.Module] = []
        for i in range(steps):
            layers += [
                _upsample2x(in_channels if i == 0 else out_channels, out_channels),
                ConvBlock(out_channels, out_channels, n=1),
            ]
        super().__init__(*layers)


class _FuseStage(nn.Module):
    """One decoder stage: x2 upsample the running map, concatenate the skip, two conv blocks."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = _upsample2x(in_channels, out_channels)
        self.conv = ConvBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """[B, in, h, w], [B, skip, H', W'] -> [B, out, H', W'] with H' ~ 2h."""
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            # only when the image side is not a multiple of the patch size (the token grid rounds down)
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class UNETRDecoder(nn.Module):
    """UNETR-style decoder for equal-stride (plain ViT) features.

    With ``n = len(decoder_channels)`` stages and features ``f_0 .. f_{n-1}`` (shallow to deep) at stride
    ``r = 2**n``: the bottleneck ``f_{n-1}`` is upsampled x2 per stage; stage ``k`` (1-based, stride ``r / 2**k``)
    fuses ``f_{n-1-k}`` brought up by ``k`` transposed convs, and the last stage (stride 1) fuses a 2-conv
    stem applied to the image. For ViT-B/16 with blocks (2, 5, 8, 11) this is UNETR's z3/z6/z9/z12 layout.

    A stride that is not a power of two (DINOv2's and EVA-02's patch 14) is decoded as the nearest power of two
    ``2**n`` (16 for 14): the maps are first resampled bilinearly from the patch grid to ``H / 2**n`` x ``W / 2**n``
    (224 px: 16 x 16 tokens to 14 x 14), so the image side must be a multiple of ``2**n``.

    Args:
        encoder_channels: Channels of each feature map (shallow to deep), length ``n``.
        reduction: Common stride of the feature maps (ViT patch size); ``2**n`` is the power of two nearest to it.
        in_channels: Image channels, for the full-resolution stem.
        num_classes: Output logit channels.
        decoder_channels: Channels of the stages from stride ``r/2`` down to stride 1.

    Raises:
        ValueError: If the numbers of features, stages and the stride do not fit together.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reduction: int,
        in_channels: int,
        num_classes: int,
        decoder_channels: Sequence[int] = DEFAULT_UNETR_CHANNELS,
    ) -> None:
        super().__init__()
        n = _nearest_power_of_two_exponent(reduction)
        self.grid_stride = 2**n
        if len(decoder_channels) != n or len(encoder_channels) != n:
            raise ValueError(
                f"UNETR at feature stride {reduction} needs {n} features (out_indices) and {n} decoder_channels, "
                f"got {len(encoder_channels)} and {len(decoder_channels)}."
            )
        # stage k (0-based) outputs decoder_channels[k] at stride r / 2**(k+1); its skip has the same width
        self.skips = nn.ModuleList(
            _SkipProjection(encoder_channels[n - 2 - k], decoder_channels[k], steps=k + 1) for k in range(n - 1)
        )
        self.stem = ConvBlock(in_channels, decoder_channels[-1])
        widths = [encoder_channels[-1], *decoder_channels]
        self.stages = nn.ModuleList(_FuseStage(widths[k], decoder_channels[k], widths[k + 1]) for k in range(n))
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=1)

    def forward(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode to logits.

        Args:
            image: Normalised input, shape [B, in_channels, H, W].
            features: ``n`` maps, each [B, encoder_channels[i], H/r, W/r], shallow to deep.

        Returns:
            Logits, shape [B, num_classes, H, W].
        """
        grid = (image.shape[-2] // self.grid_stride, image.shape[-1] // self.grid_stride)
        if tuple(features[-1].shape[-2:]) != grid:  # patch stride not a power of two (see the class docstring)
            features = [F.interpolate(f, size=grid, mode="bilinear", align_corners=False) for f in features]
        skips = [proj(f) for proj, f in zip(self.skips, features[-2::-1])] + [self.stem(image)]
        x = features[-1]
        for stage, skip in zip(self.stages, skips):
            x = stage(x, skip)
        return self.head(x)


class UNetDecoder(nn.Module):
    """U-Net decoder for hierarchical features (strides 2..32 or 4..32), built on smp's ``UnetDecoder``.

    smp's decoder expects one map per power-of-two stride from the input resolution down (it uses the first
    only for its size). Strides the encoder lacks (Swin has no stride-2 map) are filled with zero-channel
    tensors, which is also what smp's own timm encoder wrapper does. Each stage upsamples (nearest) to the
    next skip's size, so any input size works.

    Args:
        encoder_channels: Channels of each feature map (shallow to deep).
        reductions: Stride of each feature map; distinct powers of two, increasing.
        num_classes: Output logit channels.
        decoder_channels: Channels of the ``log2(max(reductions))`` stages, deepest first.

    Raises:
        ValueError: If the strides are not increasing powers of two or ``decoder_channels`` has the wrong length.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[int],
        num_classes: int,
        decoder_channels: Sequence[int] = DEFAULT_UNET_CHANNELS,
    ) -> None:
        super().__init__()
        if list(reductions) != sorted(set(reductions)):
            raise ValueError(f"U-Net decoder needs strictly increasing feature strides, got {list(reductions)}.")
        depth = _log2_exact(reductions[-1], "deepest feature stride")
        for r in reductions:
            _log2_exact(r, "feature stride")
        if len(decoder_channels) != depth:
            raise ValueError(
                f"U-Net decoder needs {depth} decoder_channels (one per x2 stage), got {len(decoder_channels)}."
            )
        self.strides = [2**k for k in range(1, depth + 1)]
        channels_at = dict(zip(reductions, encoder_channels))
        skip_channels = [channels_at.get(s, 0) for s in self.strides]
        self.unet = SmpUnetDecoder(
            encoder_channels=[0, *skip_channels],  # the leading entry (input resolution) is ignored by smp
            decoder_channels=list(decoder_channels),
            n_blocks=depth,
        )
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=1)
        self._reductions = list(reductions)

    def forward(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode to logits.

        Args:
            image: Normalised input, shape [B, C, H, W]; only its size is used.
            features: Maps [B, encoder_channels[i], H/reductions[i], W/reductions[i]], shallow to deep.

        Returns:
            Logits, shape [B, num_classes, H, W].
        """
        B, _, H, W = image.shape
        by_stride = dict(zip(self._reductions, features))
        pyramid = [image] + [
            by_stride[s] if s in by_stride else image.new_zeros(B, 0, math.ceil(H / s), math.ceil(W / s))
            for s in self.strides
        ]
        return self.head(self.unet(pyramid))


class LinearDecoder(nn.Module):
    """Light all-MLP head: project, upsample, fuse, classify, upsample (SegFormer's decoder, any encoder family).

    Each feature map gets a 1x1 conv to ``width`` channels and is upsampled bilinearly to the finest map's size;
    the concatenation goes through 1x1 conv -> BatchNorm -> ReLU -> 1x1 conv to ``num_classes``, and the logits
    are upsampled bilinearly to the image. No layer sees the image itself, and every layer is per-pixel, so
    whatever the segmentation needs beyond a per-position classifier has to come from the encoder.

    Args:
        encoder_channels: Channels of each feature map (shallow to deep).
        num_classes: Output logit channels.
        decoder_channels: One entry, the projection and fusion width.

    Raises:
        ValueError: If ``decoder_channels`` does not hold exactly one width.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int,
        decoder_channels: Sequence[int] = DEFAULT_LINEAR_CHANNELS,
    ) -> None:
        super().__init__()
        if len(decoder_channels) != 1:
            raise ValueError(f"The linear decoder takes one width in decoder_channels, got {list(decoder_channels)}.")
        width = decoder_channels[0]
        self.projections = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in encoder_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(width * len(encoder_channels), width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode to logits.

        Args:
            image: Normalised input, shape [B, C, H, W]; only its size is used.
            features: Maps [B, encoder_channels[i], h_i, w_i] (any strides).

        Returns:
            Logits, shape [B, num_classes, H, W].
        """
        size = max((f.shape[-2:] for f in features), key=lambda hw: hw[0] * hw[1])
        projected = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            if f.shape[-2:] != size
            else proj(f)
            for proj, f in zip(self.projections, features)
        ]
        logits = self.head(self.fuse(torch.cat(projected, dim=1)))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
