"""EVA / EVA-02 and BEiT (timm ``eva`` and ``beit``): plain transformers with rotary or relative positions.

As for ViT (:mod:`medpeft.models.families.vit`) all maps share the patch stride and UNETR decodes them. EVA-02 adds
rotary position embeddings (built for ``data.image_size``) and, from the base size up, separate ``q_proj`` /
``k_proj`` / ``v_proj`` layers and a SwiGLU MLP (``fc1_g``, ``fc1_x``, ``fc2``). Both attentions read their
projection weights themselves (``F.linear(x, self.qkv.weight, qkv_bias)`` with separate q / v biases) instead of
calling the layer; adapters expose the adapted weight as ``.weight`` so those reads see it
(:class:`~medpeft.adapters.base.AdapterLayer`). BEiT's relative-position bias tables are resized to the grid by
timm's ``checkpoint_filter_fn`` on load.
"""

from __future__ import annotations

from typing import ClassVar

from medpeft.models.families.base import EncoderFamily, register_family
from medpeft.models.families.vit import TRANSFORMER_BLOCKS, TRANSFORMER_PRESETS

__all__ = ["EVA", "EvaFamily"]


class EvaFamily(EncoderFamily):
    """EVA, EVA-02 and BEiT encoders; see the module docstring."""

    name = "eva"
    models = "eva02_*, eva_*, beit*"
    timm_modules = ("eva", "beit")
    auto_decoder = "unetr"
    sized_by_image = True
    presets: ClassVar[dict[str, str]] = TRANSFORMER_PRESETS
    blocks = TRANSFORMER_BLOCKS
    tcurlora = (
        "q, k, v (fused qkv split in three, or q_proj / k_proj / v_proj) and proj: one [4 depth, d, d] tensor; "
        "SwiGLU fc1_g and fc1_x share one tensor, fc2 another"
    )
    example_config = "model.encoder=eva02_tiny_patch14_224 (or beit_base_patch16_224)"


EVA = register_family(EvaFamily())
