"""Segmentation networks built from timm encoders: encoder, decoders, pretrained loading, complexity."""

from __future__ import annotations

from medpeft.models.checkpointing import enable_grad_checkpointing
from medpeft.models.complexity import count_parameters, measure_gflops
from medpeft.models.decoders import LinearDecoder, UNetDecoder, UNETRDecoder
from medpeft.models.encoder import TimmEncoder
from medpeft.models.pretrained import (
    PretrainedWeightsError,
    encoder_state_dict_for_timm,
    load_pretrained_decoder,
    load_pretrained_encoder,
)
from medpeft.models.segmenter import Segmenter, build_segmenter

__all__ = [
    "LinearDecoder",
    "PretrainedWeightsError",
    "Segmenter",
    "TimmEncoder",
    "UNETRDecoder",
    "UNetDecoder",
    "build_segmenter",
    "count_parameters",
    "enable_grad_checkpointing",
    "encoder_state_dict_for_timm",
    "load_pretrained_decoder",
    "load_pretrained_encoder",
    "measure_gflops",
]
