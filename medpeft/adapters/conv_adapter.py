"""Conv-Adapter, parallel to a convolution (Chen et al., arXiv 2208.07463, 2022).

For a matched ``nn.Conv2d`` of ``C_in -> C_out`` channels and kernel ``k_h x k_w``::

    y = conv(x) + alpha * up(relu(down(dw(x))))

* ``dw``: depthwise ``k_h x k_w`` convolution on the ``C_in`` input channels (``groups = C_in``, no bias) with the
  base convolution's kernel size, stride, padding (mode included; timm's dynamic TensorFlow "same" padding as well)
  and dilation, so the branch output has the base output's shape;
* ``down``: ``1 x 1``, ``C_in -> m`` (``m`` = ``bottleneck``, the size knob), no bias; ``relu``;
* ``up``: ``1 x 1``, ``m -> C_out``, no bias, zero-initialised, so the layer equals the base convolution at init;
* ``alpha``: a learned per-output-channel scale ``[C_out]``, initialised to 1.

``dw`` and ``down`` keep PyTorch's default (Kaiming-uniform) initialisation. The branch runs beside the convolution,
so any ``groups`` is accepted (EfficientNet's and ConvNeXt's depthwise ``conv_dw`` too). Not mergeable: the ReLU
between ``down`` and ``up`` is not a weight of the convolution.
Trainable numbers: ``C_in * k_h * k_w + C_in * m + m * C_out + C_out`` per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame, pad_same
from timm.layers.conv2d_same import Conv2dSameExport
from torch import nn

from medpeft.adapters.base import AdapterModule, adapter_module_types, register_adapter, replace_module

__all__ = ["ConvAdapterConfig", "ConvAdapterLayer", "conv_adapter_refusal"]

# nn.Conv2d subclasses whose own forward only pads (dynamic "same") or standardises the weight: the branch reproduces
# their padding, so its output lines up with theirs. Other subclasses with their own forward are refused.
_KNOWN_CONVS = (Conv2dSame, Conv2dSameExport, StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)


@dataclass
class ConvAdapterConfig:
    """Options of Conv-Adapter.

    Args:
        bottleneck: the hidden width ``m`` of the branch (``down: C_in -> m``, ``up: m -> C_out``).
    """

    bottleneck: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.bottleneck, int) or isinstance(self.bottleneck, bool) or self.bottleneck <= 0:
            raise ValueError(f"Conv-Adapter bottleneck must be a positive int, got {self.bottleneck!r}")


def conv_adapter_refusal(name: str, module: nn.Module) -> str | None:
    """Why Conv-Adapter cannot run beside ``module`` (``None``: it can): ``nn.Conv2d`` of any ``groups`` whose padding
    the branch can reproduce."""
    if not isinstance(module, nn.Conv2d) or isinstance(module, adapter_module_types()):
        return (
            f"{name!r}, a {type(module).__name__}; Conv-Adapter runs beside nn.Conv2d layers only: name the "
            "convolutions (e.g. 'layer1.0.conv1', '*conv_pw')"
        )
    if type(module).forward is not nn.Conv2d.forward and not isinstance(module, _KNOWN_CONVS):
        return (
            f"{name!r}, a {type(module).__name__} with its own forward, whose padding the adapter branch cannot "
            "know to reproduce"
        )
    return None


def _dynamic_same_padding(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` pads its input in ``forward`` (timm's TensorFlow-style dynamic "same"), not in the op."""
    return isinstance(conv, (Conv2dSame, Conv2dSameExport)) or bool(getattr(conv, "same_pad", False))


class ConvAdapterLayer(AdapterModule):
    """A frozen ``nn.Conv2d`` plus the parallel Conv-Adapter branch.

    Args:
        base_layer: the frozen convolution (any ``groups``).
        config: the bottleneck width.
    """

    def __init__(self, base_layer: nn.Conv2d, config: ConvAdapterConfig) -> None:
        super().__init__()
        refusal = conv_adapter_refusal("base_layer", base_layer)
        if refusal is not None:
            raise TypeError(f"Conv-Adapter cannot run beside {refusal}")
        self.base_layer = base_layer.requires_grad_(False)
        conv, m = base_layer, config.bottleneck
        self.dynamic_padding = _dynamic_same_padding(conv)
        weight = conv.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.adapter_dw = nn.Conv2d(
            conv.in_channels,
            conv.in_channels,
            conv.kernel_size,
            conv.stride,
            0 if self.dynamic_padding else conv.padding,
            conv.dilation,
            groups=conv.in_channels,
            bias=False,
            padding_mode="zeros" if self.dynamic_padding else conv.padding_mode,
            **factory,
        )
        self.adapter_down = nn.Conv2d(conv.in_channels, m, 1, bias=False, **factory)
        self.adapter_act = nn.ReLU()
        self.adapter_up = nn.Conv2d(m, conv.out_channels, 1, bias=False, **factory)
        self.adapter_scale = nn.Parameter(torch.ones(conv.out_channels, **factory))
        nn.init.zeros_(self.adapter_up.weight)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """``up(relu(down(dw(x))))`` before the scale; ``[B, C_out, H', W']`` like the base output."""
        if self.dynamic_padding:
            conv = self.base_layer
            x = pad_same(x, conv.kernel_size, conv.stride, conv.dilation)
        return self.adapter_up(self.adapter_act(self.adapter_down(self.adapter_dw(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        branch = self.branch(x)
        return out + branch * self.adapter_scale.to(branch.dtype).reshape(-1, 1, 1)


@register_adapter(
    "conv_adapter",
    ConvAdapterConfig,
    size_knob="bottleneck",
    merge_refusal="Conv-Adapter is a nonlinear branch (a ReLU between its down and up projections) beside the "
    "convolution, which no weight of the convolution can express",
    refuse=conv_adapter_refusal,
    default_targets=("conv",),
    summary="parallel depthwise-bottleneck branch beside convolutions (Chen et al. 2022)",
)
def apply_conv_adapter(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: ConvAdapterConfig) -> None:
    """Replace every matched convolution of ``root`` by a :class:`ConvAdapterLayer`."""
    for name, module, _pattern in matches:
        replace_module(root, name, ConvAdapterLayer(module, config))
