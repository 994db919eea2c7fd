"""Model size and compute: parameter counts split by encoder / adapters / decoder, and GFLOPs per image.

FLOPs are counted with PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` (which counts matmuls,
convolutions and attention; element-wise ops, norms and activations are not counted).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "measure_gflops"]


def _adapter_parameter_ids(net: nn.Module) -> set[int]:
    """ids of the parameters owned by adapter modules (empty if the adapters package is not available)."""
    try:
        from medpeft.adapters import adapter_parameters  # lazy: adapters are optional for model code
    except ImportError:
        return set()
    return {id(p) for p in adapter_parameters(net)}


def _numel(params: Sequence[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def count_parameters(net: nn.Module) -> dict[str, int]:
    """Count parameters of a :class:`~medpeft.models.segmenter.Segmenter`, split by role.

    Adapter parameters are found by module type (``medpeft.adapters.adapter_parameters``), never by name.
    An adapter's wrapped ``base_layer`` is not an adapter parameter: it counts as encoder.

    Args:
        net: A network with ``encoder`` and ``decoder`` submodules, adapters possibly injected.

    Returns:
        ``total_params`` and ``trainable_params`` over the whole network; ``encoder_params`` (every encoder
        parameter, frozen or not, adapters excluded) and ``encoder_trainable_params`` (those of them with
        ``requires_grad``); ``decoder_params`` (decoder and head); ``adapter_params`` (0 if the adapters package
        is unavailable). ``total_params == encoder_params + adapter_params + decoder_params`` when adapters sit
        in the encoder or decoder.
    """
    adapter_ids = _adapter_parameter_ids(net)
    params = list(net.parameters())  # deduplicated by nn.Module
    encoder = [p for p in net.encoder.parameters() if id(p) not in adapter_ids]
    return {
        "total_params": _numel(params),
        "trainable_params": _numel([p for p in params if p.requires_grad]),
        "encoder_params": _numel(encoder),
        "encoder_trainable_params": _numel([p for p in encoder if p.requires_grad]),
        "decoder_params": _numel([p for p in net.decoder.parameters() if id(p) not in adapter_ids]),
        "adapter_params": _numel([p for p in params if id(p) in adapter_ids]),
    }


def measure_gflops(net: nn.Module, input_shape: Sequence[int] | None = None) -> float:
    """GFLOPs of one forward pass, per image.

    Convention: ``FlopCounterMode`` counts a multiply-add as **2** FLOPs, so a conv layer costs
    ``2 * C_in * C_out * k * k * H_out * W_out`` (bias not counted) and a linear layer ``2 * in * out`` per row.
    Papers that report "FLOPs" as multiply-accumulates (MACs) give half these numbers.

    The network runs once on zeros in eval mode under ``torch.no_grad()`` (dropout/drop-path off; they do not
    change the count) and its training mode is restored afterwards.

    Args:
        net: Any module taking one tensor.
        input_shape: [B, C, H, W] of the input; the total is divided by ``B``. Defaults to one image of
            ``net.encoder.in_channels`` x ``net.encoder.img_size`` squared for a Segmenter.

    Returns:
        Giga-FLOPs (1e9) per image.
    """
    if input_shape is None:
        input_shape = (1, net.encoder.in_channels, net.encoder.img_size, net.encoder.img_size)
    first = next(net.parameters(), None)
    x = torch.zeros(*input_shape) if first is None else first.new_zeros(*input_shape)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
    finally:
        net.train(was_training)
    return counter.get_total_flops() / input_shape[0] / 1e9
