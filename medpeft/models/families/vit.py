"""Plain Vision Transformers (``vision_transformer``, ``deit``): ViT, DeiT, DINOv2 (with or without registers).

Every block returns tokens on one patch grid, so all maps have the patch stride (16, or 14 for DINOv2) and the
decoder does all the upsampling (UNETR; at stride 14 it resamples the maps to the nearest power-of-two stride,
see :class:`~medpeft.models.decoders.UNETRDecoder`). The network is built for ``data.image_size``: the absolute
position embeddings of a pretrained file are resampled to its grid on load (timm's ``checkpoint_filter_fn``).
Class and register tokens are dropped from the returned maps by timm's ``forward_intermediates``.
"""

from __future__ import annotations

from typing import ClassVar

from medpeft.models.families.base import EncoderFamily, register_family

__all__ = ["TRANSFORMER_BLOCKS", "TRANSFORMER_PRESETS", "VIT", "ViTFamily"]

#: Preset meanings shared by the plain-transformer families.
TRANSFORMER_PRESETS = {
    "attn": "attention projections of every block: fused qkv (or q_proj, k_proj, v_proj) and proj",
    "mlp": "the block MLP: fc1, fc2 (SwiGLU: fc1_g, fc1_x, fc2)",
    "conv": "none (the only convolution is the patch embedding, outside the blocks)",
}
TRANSFORMER_BLOCKS = "transformer blocks 0 .. depth-1 (blocks.<k>)"


class ViTFamily(EncoderFamily):
    """ViT / DeiT / DINOv2 encoders; see the module docstring."""

    name = "vit"
    models = "vit_*, deit_*, vit_*_dinov2, vit_*_reg4_dinov2"
    timm_modules = ("vision_transformer", "deit")
    auto_decoder = "unetr"
    sized_by_image = True
    presets: ClassVar[dict[str, str]] = TRANSFORMER_PRESETS
    blocks = TRANSFORMER_BLOCKS
    tcurlora = (
        "q, k, v (a fused qkv split in three) and proj of all adapted blocks: one [4 depth, d, d] tensor; "
        "fc1 [4d, d] and fc2 [d, 4d] one tensor each"
    )
    example_config = "configs/demo_tcur.yaml (vit_tiny_patch16_224); model.encoder=vit_small_patch14_dinov2"


VIT = register_family(ViTFamily())
