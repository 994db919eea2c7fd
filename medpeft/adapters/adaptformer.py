"""AdaptFormer: a parallel bottleneck beside the MLP (Chen et al., NeurIPS 2022, arXiv 2205.13535).

A wrapped module ``f`` (a transformer block's MLP ``mlp``: preset ``mlp-module``) becomes

``y = f(x) + s * (W_up ReLU(W_down x + b_down) + b_up)``

with ``W_down: [m, D_in]``, ``W_up: [D_out, m]``, ``D_in`` the ``in_features`` of the first ``nn.Linear`` in ``f``
and ``D_out`` the ``out_features`` of the last (``named_modules`` order: ``mlp.fc1``, ``mlp.fc2``; a bare
``nn.Linear`` may be wrapped too), and ``s`` a fixed scale (0.1, the paper's). A module without an ``nn.Linear`` is
refused. Wrapping the MLP module, the branch reads the MLP's input (after the block's ``norm2``) and its sum passes
the block's layer scale and drop path; the reference code (github.com/ShoufaChen/AdaptFormer) feeds the branch the
block's residual stream before ``norm2`` and adds it after the MLP's drop path.

Initialisation (the reference code's ``init_option="lora"``): ``W_down`` Kaiming-uniform (a = sqrt(5)), ``W_up``,
``b_down`` and ``b_up`` zeros, so the wrapped module is exactly ``f`` at initialisation. Optional dropout after the
ReLU, as in the reference code.

Not mergeable: the ReLU branch is not a weight change.
Trainable numbers per wrapped module: ``D_in m + m + m D_out + D_out`` (both projections with their biases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.adapters.base import AdapterModule, Matches, register_adapter, replace_module
from medpeft.adapters.houlsby import bottleneck_refusal, check_not_nested, linear_layers

__all__ = ["AdaptFormerAdapter", "AdaptFormerConfig"]


@dataclass
class AdaptFormerConfig:
    """Options of AdaptFormer.

    Args:
        bottleneck: the branch's inner width ``m``.
        scale: the fixed factor ``s`` on the branch (not learned).
        dropout: dropout probability after the ReLU.
    """

    bottleneck: int = 64
    scale: float = 0.1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.bottleneck, int) or isinstance(self.bottleneck, bool) or self.bottleneck <= 0:
            raise ValueError(f"adaptformer bottleneck must be a positive int, got {self.bottleneck!r}")
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"adaptformer scale must be a finite non-zero number, got {self.scale!r}")
        self.scale = float(self.scale)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adaptformer dropout must be in [0, 1), got {self.dropout!r}")


class AdaptFormerAdapter(AdapterModule):
    """``f(x) + s * up(ReLU(down(x)))`` around a frozen module ``f``; see the module docstring.

    Args:
        base_layer: the frozen module ``f`` (``[..., D_in] -> [..., D_out]``), containing at least one ``nn.Linear``.
        config: bottleneck width, scale, dropout.
    """

    def __init__(self, base_layer: nn.Module, config: AdaptFormerConfig) -> None:
        super().__init__()
        linears = linear_layers(base_layer)
        if not linears:
            raise TypeError(f"adaptformer wraps modules containing an nn.Linear, got {type(base_layer).__name__}")
        first, last = linears[0], linears[-1]
        self.base_layer = base_layer.requires_grad_(False)
        self.in_features, self.out_features = first.in_features, last.out_features
        self.bottleneck, self.scale = config.bottleneck, config.scale
        factory = {"device": last.weight.device, "dtype": last.weight.dtype}
        self.adaptformer_down = nn.Linear(self.in_features, self.bottleneck, **factory)
        self.adaptformer_up = nn.Linear(self.bottleneck, self.out_features, **factory)
        self.adaptformer_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.adaptformer_down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.adaptformer_down.bias)
            nn.init.zeros_(self.adaptformer_up.weight)
            nn.init.zeros_(self.adaptformer_up.bias)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        branch = self.adaptformer_up(self.adaptformer_dropout(F.relu(self.adaptformer_down(x))))
        return self.base_layer(x, *args, **kwargs) + branch * self.scale


@register_adapter(
    "adaptformer",
    AdaptFormerConfig,
    size_knob="bottleneck",
    merge_refusal="a nonlinear (ReLU) branch beside the MLP is not a weight change",
    refuse=bottleneck_refusal("adaptformer"),
    default_targets=("mlp-module",),
    summary="parallel scaled bottleneck beside the MLP (Chen et al. 2022)",
)
def apply_adaptformer(root: nn.Module, matches: Matches, config: AdaptFormerConfig) -> None:
    """Replace every matched module of ``root`` by an :class:`AdaptFormerAdapter` around it."""
    check_not_nested("adaptformer", matches)
    for name, module, _pattern in matches:
        replace_module(root, name, AdaptFormerAdapter(module, config))
