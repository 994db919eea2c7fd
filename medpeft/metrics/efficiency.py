"""The efficiency columns of a PEFT table: parameters by role, GFLOPs per image, adapter file size."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from medpeft.adapters import merge_adapters
from medpeft.adapters.inject import merge_refusal
from medpeft.models import count_parameters, measure_gflops

__all__ = ["FLOP_CONVENTION", "efficiency_figures"]

FLOP_CONVENTION = "multiply-add = 2 FLOPs (torch.utils.flop_counter); MACs are half"


def efficiency_figures(
    net: nn.Module, input_shape: Sequence[int], adapter_file: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Parameter counts, shares and GFLOPs of a segmenter as trained.

    Args:
        net: A :class:`~medpeft.models.segmenter.Segmenter`, adapters injected (not merged), ``requires_grad`` set
            as trained.
        input_shape: ``[1, C, S, S]``, the evaluation input.
        adapter_file: The saved adapter, whose size on disk is reported; ``None`` reports ``None``.

    Returns:
        :func:`~medpeft.models.count_parameters`'s counts plus ``trainable_fraction`` (of all parameters),
        ``adapter_fraction_of_encoder``, ``gflops`` (inference with the adapters merged into a copy, as PEFT
        papers report it; as trained for a method that cannot merge: VPT, bottleneck adapters), ``gflops_unmerged``
        (a forward as trained: TRM and tCURLoRA also rebuild their weight deltas, work per call, not per image),
        ``flop_convention``, ``mergeable`` and ``adapter_file_bytes``.
    """
    counts = count_parameters(net)
    merged = copy.deepcopy(net)
    refusal = merge_refusal(net.encoder)
    if refusal is None:
        merge_adapters(merged.encoder)
    return {
        **{key: int(value) for key, value in counts.items()},
        "trainable_fraction": counts["trainable_params"] / max(1, counts["total_params"]),
        "adapter_fraction_of_encoder": counts["adapter_params"] / max(1, counts["encoder_params"]),
        "gflops": measure_gflops(merged, input_shape=input_shape),
        "gflops_unmerged": measure_gflops(net, input_shape=input_shape),
        "flop_convention": FLOP_CONVENTION,
        "mergeable": refusal is None,
        "adapter_file_bytes": os.path.getsize(adapter_file) if adapter_file is not None else None,
    }
