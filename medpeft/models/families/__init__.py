"""Encoder families: what differs between timm architectures, one file each (see :mod:`.base`)."""

from __future__ import annotations

from medpeft.models.families import convnext, efficientnet, eva, resnet, samvit, swin, vit  # noqa: F401 (register)
from medpeft.models.families.base import (
    FAMILIES,
    BuiltBackbone,
    EncoderFamily,
    UnsupportedEncoderError,
    family_for,
    register_family,
)
from medpeft.models.families.generic import GENERIC

__all__ = [
    "FAMILIES",
    "GENERIC",
    "BuiltBackbone",
    "EncoderFamily",
    "UnsupportedEncoderError",
    "family_for",
    "register_family",
]
