"""What differs between timm encoder families, and the registry that finds a model name's family.

A family is chosen by the timm module that defines the architecture (``timm.models.model_entrypoint(name)``'s
module: ``vision_transformer``, ``eva``, ``convnext``, ...), so ``deit_*``, ``vit_*_dinov2`` and ``vit_*`` all land
in the ViT family whatever their prefix. Names no registered family claims fall to the generic family
(:mod:`medpeft.models.families.generic`), which accepts any backbone timm's ``features_only`` supports and refuses
the rest before training, with the reason.

Each family answers the questions a user asks before adapting an encoder (``describe()``, also the README's table):
which decoder ``auto`` picks, what the target presets ``attn`` / ``mlp`` / ``conv`` select, what ``blocks`` counts
and how tCURLoRA groups the adapted weights.

A new family is one file defining a subclass and calling :func:`register_family`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import timm
import torch
from timm.models._features import FeatureGetterNet
from torch import nn

__all__ = [
    "FAMILIES",
    "BuiltBackbone",
    "EncoderFamily",
    "UnsupportedEncoderError",
    "evenly_spaced_blocks",
    "family_for",
    "register_family",
    "timm_module_of",
]


def evenly_spaced_blocks(depth: int, n: int = 4) -> tuple[int, ...]:
    """``n`` evenly spaced block indices ending at the last block, e.g. (2, 5, 8, 11) for 12 blocks."""
    return tuple(round((i + 1) * depth / n) - 1 for i in range(n))


class UnsupportedEncoderError(ValueError):
    """A timm model medpeft cannot use as a segmentation encoder; the message says why."""


@dataclass
class BuiltBackbone:
    """A freshly built timm module and what it returns.

    Attributes:
        model: The module holding the weights (module names follow timm's).
        out_channels: Channels of each returned map.
        reductions: Stride of each returned map w.r.t. the input.
        out_indices: The stage/block indices returned, as normalised by timm.
        intermediates: Whether maps come from the plain model's ``forward_intermediates``.
    """

    model: nn.Module
    out_channels: list[int]
    reductions: list[int]
    out_indices: tuple[int, ...]
    intermediates: bool


class EncoderFamily:
    """How medpeft builds and runs the encoders of one timm family.

    Attributes:
        name: Short family name recorded on the encoder (``"vit"``, ``"convnext"``, ...).
        models: The timm model names it covers, as patterns, for documentation.
        timm_modules: timm model modules whose architectures belong to this family.
        auto_decoder: The decoder ``model.decoder: auto`` picks.
        sized_by_image: Whether the network is built for ``data.image_size`` (position embeddings, windows,
            relative positions depend on it); ``img_size`` is then passed to timm.
        presets: What the presets ``attn``, ``mlp`` and ``conv`` select in this family.
        blocks: What the ``adapter.blocks`` indices count.
        tcurlora: How tCURLoRA's ``grouping: shape`` stacks this family's adapted weights.
        example_config: A config (or ``--set`` line) tested with this family.
    """

    name: str = ""
    models: str = ""
    timm_modules: tuple[str, ...] = ()
    auto_decoder: str = "unet"
    sized_by_image: bool = False
    presets: ClassVar[dict[str, str]] = {}
    blocks: str = ""
    tcurlora: str = ""
    example_config: str = ""

    def timm_kwargs(self, name: str, img_size: int) -> dict[str, Any]:
        """Architecture kwargs for ``timm.create_model`` besides ``in_chans`` (the same for the plain model)."""
        return {"img_size": img_size} if self.sized_by_image else {}

    def build(
        self, name: str, img_size: int, out_indices: Sequence[int] | None, kwargs: dict[str, Any]
    ) -> BuiltBackbone:
        """Create the timm module with random weights and say what it returns.

        The default is timm's ``features_only`` model; a ``FeatureGetterNet`` (plain transformers) is unwrapped
        so that module names read ``model.blocks.3.attn.qkv`` rather than ``model.model.blocks...``.

        Args:
            name: timm model name.
            img_size: Input side length in pixels (already in ``kwargs`` for ``sized_by_image`` families).
            out_indices: Stages/blocks to return, or ``None`` for the family default.
            kwargs: ``in_chans`` and :meth:`timm_kwargs`.

        Raises:
            UnsupportedEncoderError: If timm cannot build the model with ``features_only`` (the reason is kept).
        """
        if out_indices is None:
            with torch.device("meta"):
                out_indices = self.default_out_indices(timm.create_model(name, pretrained=False, **kwargs))
        try:
            features = timm.create_model(
                name,
                pretrained=False,
                features_only=True,
                out_indices=tuple(out_indices) if out_indices is not None else None,
                **kwargs,
            )
        except Exception as e:  # timm raises many types for models without feature extraction
            raise UnsupportedEncoderError(
                f"Encoder {name!r} cannot be used: timm cannot build it with features_only=True "
                f"({type(e).__name__}: {e}); medpeft's decoders need its multi-scale feature maps."
            ) from e
        info = features.feature_info
        intermediates = isinstance(features, FeatureGetterNet)
        return BuiltBackbone(
            model=features.model if intermediates else features,
            out_channels=list(info.channels()),
            reductions=list(info.reduction()),
            out_indices=tuple(info.out_indices),
            intermediates=intermediates,
        )

    def default_out_indices(self, plain: nn.Module) -> tuple[int, ...] | None:
        """Which stages/blocks to return when ``out_indices`` is not given; ``None`` keeps timm's default.

        Plain transformers (a ``blocks`` list whose outputs share one stride) get four evenly spaced blocks
        ending at the last one, UNETR's layout: ``(2, 5, 8, 11)`` for 12 blocks. ``plain`` is the weightless
        plain model on the meta device.
        """
        if self.auto_decoder == "unetr" and isinstance(getattr(plain, "blocks", None), (nn.Sequential, nn.ModuleList)):
            return evenly_spaced_blocks(len(plain.blocks))
        return None

    def features(
        self, model: nn.Module, x: torch.Tensor, out_indices: tuple[int, ...], intermediates: bool
    ) -> list[torch.Tensor]:
        """Run the timm module and return NCHW maps, shallow to deep.

        Args:
            model: The encoder's timm module: a plain model when ``intermediates``, else timm's
                ``features_only`` wrapper.
            x: Normalised images, shape [B, C, H, W].
            out_indices: The block indices to return (read when ``intermediates``).
            intermediates: Whether features come from the plain model's ``forward_intermediates`` (plain
                transformers, which timm's ``FeatureGetterNet`` wraps) rather than from calling the wrapper.
        """
        if intermediates:
            return model.forward_intermediates(
                x, indices=out_indices, norm=False, output_fmt="NCHW", intermediates_only=True
            )
        features = model(x)
        if str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC"):
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        return features

    def choose_decoder(self, reductions: Sequence[int]) -> str:
        """The decoder ``model.decoder: auto`` builds for maps at these strides."""
        return self.auto_decoder

    def describe(self) -> dict[str, str]:
        """The family's facts for documentation: decoder, presets, blocks, tCURLoRA grouping, example."""
        return {
            "family": self.name,
            "timm models": self.models,
            "decoder (auto)": self.auto_decoder,
            **{f"preset {k}": v for k, v in self.presets.items()},
            "blocks": self.blocks,
            "tCURLoRA grouping": self.tcurlora,
            "example": self.example_config,
        }


#: Registered families by name, in registration order; the generic family is the fallback, not in here.
FAMILIES: dict[str, EncoderFamily] = {}


def register_family(family: EncoderFamily) -> EncoderFamily:
    """Add ``family`` to :data:`FAMILIES`; its ``timm_modules`` must not be claimed by another family."""
    if family.name in FAMILIES:
        raise ValueError(f"encoder family {family.name!r} is already registered")
    for other in FAMILIES.values():
        shared = set(other.timm_modules) & set(family.timm_modules)
        if shared:
            raise ValueError(f"timm modules {sorted(shared)} are claimed by {other.name!r} and {family.name!r}")
    FAMILIES[family.name] = family
    return family


def timm_module_of(name: str) -> str:
    """The timm module that defines model ``name`` (``"vision_transformer"`` for ``"deit_tiny_patch16_224"``).

    Raises:
        UnsupportedEncoderError: If timm knows no such model.
    """
    architecture = name.split(".", 1)[0]  # drop a pretrained tag: "vit_tiny_patch16_224.augreg_in21k"
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5)
        hint = f"; similar timm names: {', '.join(close)}" if close else ""
        raise UnsupportedEncoderError(f"timm has no model named {name!r}{hint}.")
    return timm.models.model_entrypoint(architecture).__module__.rsplit(".", 1)[-1]


def family_for(name: str) -> EncoderFamily:
    """The family of timm model ``name``; the generic family for architectures no family claims.

    Raises:
        UnsupportedEncoderError: If timm knows no such model.
    """
    from medpeft.models.families.generic import GENERIC  # the fallback imports this module

    module = timm_module_of(name)
    return next((f for f in FAMILIES.values() if module in f.timm_modules), GENERIC)
