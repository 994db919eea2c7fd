"""Any other timm backbone: whatever timm's ``features_only`` supports, decoded by the decoder its strides fit.

Hierarchical maps (distinct strides) get the U-Net decoder, equal-stride maps (plain transformers, which timm
wraps in ``FeatureGetterNet``) the UNETR decoder. A model timm cannot build with ``features_only``, or whose
features fail to compute on a blank image of the configured size and channels (one forward when the encoder is
built), is refused then, before any training, with the reason. Presets follow
timm's usual names (``blocks.<k>.attn.qkv``, ``blocks.<k>.mlp.fc1``); where they match nothing, the error lists
the model's adaptable layers and explicit ``targets`` patterns name them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import timm
import torch

from medpeft.models.families.base import BuiltBackbone, EncoderFamily, UnsupportedEncoderError, evenly_spaced_blocks

__all__ = ["GENERIC", "GenericFamily"]


class GenericFamily(EncoderFamily):
    """The fallback family (not registered: :func:`~medpeft.models.families.base.family_for` returns it)."""

    name = "generic"
    models = "anything else timm builds with features_only (mobilenetv3_*, regnet*, mixer_*, ...)"
    auto_decoder = "by strides: unet for distinct strides, unetr for equal ones"
    presets: ClassVar[dict[str, str]] = {
        "attn": "blocks.<k>.attn.qkv / proj where the model has them",
        "mlp": "blocks.<k>.mlp.fc1 / fc2 where the model has them",
        "conv": "ResNet-style conv1..3 and EfficientNet-style conv_pw / conv_pwl inside blocks, where present",
    }
    blocks = "containers named blocks.<k>, blocks.<s>.<k> or layer<s>.<k>, in forward order"
    tcurlora = "by weight shape"
    example_config = "model.encoder=<any timm name with features_only support>"

    def choose_decoder(self, reductions: Sequence[int]) -> str:
        """UNETR for maps of one stride, U-Net otherwise."""
        return "unetr" if len(set(reductions)) == 1 else "unet"

    def timm_kwargs(self, name: str, img_size: int) -> dict[str, Any]:
        """``img_size`` when the architecture takes one (transformers with fixed position embeddings)."""
        try:
            with torch.device("meta"):
                timm.create_model(name, pretrained=False, img_size=img_size)
        except (TypeError, ValueError, AssertionError):  # no img_size argument, or one it rejects: its own size
            return {}
        return {"img_size": img_size}

    def build(
        self, name: str, img_size: int, out_indices: Sequence[int] | None, kwargs: dict[str, Any]
    ) -> BuiltBackbone:
        """timm's ``features_only`` model, checked with one forward at the image size before anything trains.

        Equal-stride maps (plain transformers) default to four evenly spaced blocks, as for ViT.

        Raises:
            UnsupportedEncoderError: If timm cannot build it, or its features cannot be computed at this size.
        """
        built = super().build(name, img_size, out_indices, kwargs)
        if out_indices is None and built.intermediates and len(set(built.reductions)) == 1:
            depth = len(built.model.feature_info)
            built = super().build(name, img_size, evenly_spaced_blocks(depth, min(4, depth)), kwargs)
        strides = built.reductions
        hierarchical = len(set(strides)) == len(strides) and all(r >= 2 and r & (r - 1) == 0 for r in strides)
        if not hierarchical and len(set(strides)) != 1:
            raise UnsupportedEncoderError(
                f"Encoder {name!r} cannot be used: its feature strides {strides} fit neither decoder (U-Net needs "
                "distinct powers of two, UNETR one common stride); choose out_indices that do, or another backbone."
            )
        size = img_size
        try:
            with torch.no_grad():
                maps = self.features(
                    built.model, torch.zeros(1, kwargs["in_chans"], size, size), built.out_indices, built.intermediates
                )
        except Exception as e:  # an architecture that builds but does not run this way
            raise UnsupportedEncoderError(
                f"Encoder {name!r} cannot be used at image size {size} with {kwargs['in_chans']} input channels: "
                f"its feature extraction fails ({type(e).__name__}: {e})."
            ) from e
        if [m.shape[1] for m in maps] != built.out_channels:
            raise UnsupportedEncoderError(
                f"Encoder {name!r} cannot be used: its maps have {[m.shape[1] for m in maps]} channels where timm "
                f"reports {built.out_channels}."
            )
        return built


GENERIC = GenericFamily()
