"""ConvNeXt (timm ``convnext``): hierarchical, four stages at strides 4, 8, 16, 32, any input size.

A ConvNeXt block is a depthwise 7x7 convolution (``conv_dw``, ``groups = channels``), a LayerNorm and an MLP whose
two layers are ``nn.Linear`` on channels-last tokens (``mlp.fc1``, ``mlp.fc2``: the pointwise convolutions of the
paper). Adapters need ``groups = 1``, so the depthwise convolutions are refused by name; the ``mlp`` preset adapts
the pointwise layers, where nearly all of a block's weights are.
"""

from __future__ import annotations

from typing import ClassVar

from medpeft.models.families.base import EncoderFamily, register_family

__all__ = ["CONVNEXT", "ConvNeXtFamily"]


class ConvNeXtFamily(EncoderFamily):
    """ConvNeXt encoders; see the module docstring."""

    name = "convnext"
    models = "convnext_*"
    timm_modules = ("convnext",)
    auto_decoder = "unet"
    presets: ClassVar[dict[str, str]] = {
        "attn": "none",
        "mlp": "the pointwise layers of every block: mlp.fc1, mlp.fc2 (nn.Linear)",
        "conv": "none (a block's only convolution is depthwise, refused: adapters need groups=1)",
    }
    blocks = "blocks of all four stages in forward order: 0..17 on convnext_tiny (3 + 3 + 9 + 3)"
    tcurlora = "by shape, so per stage: each stage's fc1 [4C, C] in one tensor, fc2 [C, 4C] in another"
    example_config = "model.encoder=convnext_tiny adapter.targets=[mlp]"


CONVNEXT = register_family(ConvNeXtFamily())
