"""LoRA: low-rank adaptation (Hu et al., 2021, arXiv 2106.09685).

``y = W0 x + b + (alpha / r) * B A dropout(x)`` with ``A: [r, in]`` Kaiming-uniform (a = sqrt(5)) and
``B: [out, r]`` zeros, so the layer equals the base layer at initialisation. For ``nn.Conv2d``, ``A`` is a
``kh x kw`` convolution ``in -> r`` with the base layer's stride/padding/dilation and ``B`` a ``1 x 1``
convolution ``r -> out`` (the same construction as Hugging Face ``peft``, which the tests use as oracle).
A base layer that is a subclass with its own ``forward`` (timm's weight-standardising ``StdConv2d``) is not
linear in its weight, so ``base(x) + B A x`` would differ from the merged layer: there the forward uses the
effective weight ``W0 + (alpha / r) B A`` instead, and dropout is refused.
Trainable numbers: ``r * (in + out)`` (Conv2d: ``r * (in * kh * kw + out)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from medpeft.adapters.base import AdapterLayer, full_precision, register_adapter, replace_module

__all__ = ["LoRAConfig", "LoRALayer"]


@dataclass
class LoRAConfig:
    """Options of LoRA.

    Args:
        rank: the inner dimension ``r``.
        alpha: scaling numerator; the update is scaled by ``alpha / rank``. ``None`` means ``alpha = rank``
            (scaling 1), which keeps the learning rate independent of the rank choice.
        dropout: dropout probability on the adapter's input path (not on the base path).
    """

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRA rank must be a positive int, got {self.rank!r}")
        if self.alpha is None:
            self.alpha = float(self.rank)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")


class LoRALayer(AdapterLayer):
    """LoRA around an ``nn.Linear`` or ``nn.Conv2d``.

    Args:
        base_layer: the frozen layer.
        config: rank, alpha, dropout.
    """

    def __init__(self, base_layer: nn.Module, config: LoRAConfig) -> None:
        super().__init__(base_layer)
        if config.dropout > 0 and not self.plain_base_layer:
            raise ValueError(
                f"LoRA dropout {config.dropout} needs the factorised path base(x) + B A x, which does not compute "
                f"{type(base_layer).__name__}.forward(x; W0 + B A); use dropout=0 for this layer type"
            )
        r = config.rank
        self.scaling = config.alpha / r
        if self.is_conv:
            conv = self.base_layer
            self.lora_A = nn.Conv2d(
                conv.in_channels, r, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False
            )
            self.lora_B = nn.Conv2d(r, conv.out_channels, 1, bias=False)
        else:
            self.lora_A = nn.Linear(self.in_features, r, bias=False)
            self.lora_B = nn.Linear(r, self.out_features, bias=False)
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        device, dtype = self.base_layer.weight.device, self.base_layer.weight.dtype
        self.lora_A.to(device=device, dtype=dtype)
        self.lora_B.to(device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def compute_delta_weight(self) -> torch.Tensor:
        a, b = self.lora_A.weight, self.lora_B.weight
        with full_precision(a.device):
            if self.is_conv:
                # b: [out, r, 1, 1], a: [r, in, kh, kw] -> [out, in, kh, kw]
                delta = torch.einsum("or,rihw->oihw", b[:, :, 0, 0].float(), a.float())
            else:
                delta = b.float() @ a.float()  # [out, r] @ [r, in] -> [out, in]
        return (delta * self.scaling).to(self.base_layer.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.plain_base_layer:
            return super().forward(x)  # effective weight through the subclass's own forward
        out = self.base_layer(x)  # bias included here; the low-rank path adds none
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


@register_adapter("lora", LoRAConfig, size_knob="rank", summary="low-rank update B A (Hu et al. 2021)")
def apply_lora(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: LoRAConfig) -> None:
    """Replace every matched layer of ``root`` by a :class:`LoRALayer`."""
    for name, module, _pattern in matches:
        replace_module(root, name, LoRALayer(module, config))
