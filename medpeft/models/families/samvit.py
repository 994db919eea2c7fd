"""SAM's image encoder (timm ``vision_transformer_sam``: ``samvit_base_patch16`` ...; MedSAM shares the layout).

A plain ViT at patch stride 16 with windowed attention (14 x 14 windows; the grid is zero-padded to a multiple
of the window, as SAM does) in most blocks and global attention in four (2, 5, 8, 11 for ViT-B), decomposed
relative positions in every block, and a convolutional neck (1x1 conv to 256 channels, LayerNorm, 3x3 conv,
LayerNorm) that produces SAM's image embedding. The network is built for ``data.image_size`` (SAM's 1024 is not
needed): the absolute position embedding is resampled to the grid at every forward by timm, and the global
blocks' relative-position tables of a 1024 px file are resampled on load.

Returned maps: the blocks of ``out_indices`` as for ViT, except that the deepest one is the neck's output
(256 channels), the embedding SAM's mask decoder reads. timm's ``features_only`` wrapper would drop the neck, so
the plain model is built and pruned here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import timm
import torch
from torch import nn

from medpeft.models.families.base import BuiltBackbone, EncoderFamily, register_family
from medpeft.models.families.vit import TRANSFORMER_BLOCKS, TRANSFORMER_PRESETS

__all__ = ["SAM", "SamFamily"]


class SamFamily(EncoderFamily):
    """SAM / MedSAM image encoders; see the module docstring."""

    name = "sam"
    models = "samvit_* (SAM, MedSAM files)"
    timm_modules = ("vision_transformer_sam",)
    auto_decoder = "unetr"
    sized_by_image = True
    presets: ClassVar[dict[str, str]] = {
        **TRANSFORMER_PRESETS,
        "conv": "none (use all-conv for the neck's two convolutions)",
    }
    blocks = TRANSFORMER_BLOCKS
    tcurlora = "as ViT: q, k, v and proj of all adapted blocks in one [4 depth, d, d] tensor; fc1, fc2 one each"
    example_config = "model.encoder=samvit_base_patch16 model.pretrained=sam_vit_b_01ec64.pth (or medsam_vit_b.pth)"

    def build(
        self, name: str, img_size: int, out_indices: Sequence[int] | None, kwargs: dict[str, Any]
    ) -> BuiltBackbone:
        """The plain SAM encoder pruned after the deepest returned block, neck kept."""
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        if out_indices is None:
            out_indices = self.default_out_indices(model)
        taken = tuple(model.prune_intermediate_layers(list(out_indices), prune_norm=False, prune_head=True))
        channels = [model.feature_info[i]["num_chs"] for i in taken]
        channels[-1] = model.neck[0].out_channels
        reductions = [model.feature_info[i]["reduction"] for i in taken]
        return BuiltBackbone(model, channels, reductions, taken, intermediates=True)

    def features(
        self, model: nn.Module, x: torch.Tensor, out_indices: tuple[int, ...], intermediates: bool
    ) -> list[torch.Tensor]:
        """Block maps [B, 768, H/16, W/16] (ViT-B), the deepest replaced by the neck's [B, 256, H/16, W/16]."""
        neck, maps = model.forward_intermediates(x, indices=out_indices, norm=False, output_fmt="NCHW")
        return [*maps[:-1], neck]


SAM = register_family(SamFamily())
