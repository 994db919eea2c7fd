"""ResNet (timm ``resnet``): hierarchical, five maps at strides 2, 4, 8, 16, 32, any input size."""

from __future__ import annotations

from typing import Any, ClassVar

from medpeft.models.families.base import EncoderFamily, register_family

__all__ = ["RESNET", "ResNetFamily"]


class ResNetFamily(EncoderFamily):
    """ResNet encoders (BatchNorm: see ``adapter.adapt_norm``)."""

    name = "resnet"
    models = "resnet*, resnext*, wide_resnet*"
    timm_modules = ("resnet",)
    auto_decoder = "unet"
    presets: ClassVar[dict[str, str]] = {
        "attn": "none",
        "mlp": "none",
        "conv": "conv1, conv2 (and conv3 in bottlenecks) of every residual block, not the shortcuts; ResNeXt's "
        "grouped conv2 is refused: name conv1 / conv3",
    }
    blocks = "residual blocks of layer1..layer4 in forward order: 0..7 on resnet18"
    tcurlora = "conv weights viewed [out, in k k], stacked by shape: the 3x3 convs of a stage's blocks share a tensor"
    example_config = "configs/busi_tcur.yaml (resnet18)"

    def timm_kwargs(self, name: str, img_size: int) -> dict[str, Any]:
        # timm zero-initialises the last BatchNorm of every residual block, so a randomly initialised ResNet
        # starts with every residual branch switched off (and adapters on its convs get no gradient). torchvision's
        # init keeps them on; on BUSI from scratch timm's cost 0.07 validation Dice in 15 epochs (docs/results.md).
        # Pre-trained weights overwrite either init.
        return {"zero_init_last": False}


RESNET = register_family(ResNetFamily())
