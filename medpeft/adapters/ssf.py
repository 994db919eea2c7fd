"""SSF: scaling and shifting the features (Lian et al., NeurIPS 2022, arXiv 2210.08823).

Each matched layer's output is scaled and shifted per output channel::

    y = gamma * layer(x) + beta,    gamma, beta: [out]  (broadcast over tokens, or over H x W for a Conv2d)

``gamma`` starts at 1 and ``beta`` at 0, so the layer equals the base layer at initialisation (``init_std > 0``
adds ``N(0, init_std^2)`` noise to both, as the authors' code does with 0.02). The paper also places SSF after
normalisation and attention outputs; here it follows the matched ``nn.Linear`` / ``nn.Conv2d`` layers (the targets).
Since it only touches output channels, grouped and depthwise convolutions (EfficientNet's and ConvNeXt's ``conv_dw``)
are accepted too.

Mergeable: ``W' = diag(gamma) W`` (row ``o`` of the weight, viewed as ``[out, fan_in]``, times ``gamma_o``) and
``b' = gamma * b + beta``; a layer without a bias gets one while merged. :meth:`SSFLayer.unmerge` restores the
original weight and bias exactly (copies kept while merged, the created bias removed again) instead of dividing by
``gamma``. Refused: weight-standardising convolutions (timm's ``StdConv2d`` family), whose forward would undo the
folded scale, and a fused ``qkv`` whose timm attention calls ``F.linear(x, qkv.weight, cat(q_bias, k_bias,
v_bias))`` itself (BEiT, EVA, Swin-V2 with separate q / v biases), which would skip the shift.
Trainable numbers: ``2 * out`` per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import nn

from medpeft.adapters.base import (
    AdapterLayer,
    adapter_module_types,
    full_precision,
    register_adapter,
    replace_module,
)

__all__ = ["SSFConfig", "SSFLayer", "ssf_refusal"]

_STANDARDISING_CONVS = (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)


@dataclass
class SSFConfig:
    """Options of SSF.

    Args:
        init_std: standard deviation of the noise added to ``gamma = 1`` and ``beta = 0`` at initialisation; 0 (the
            default) keeps the adapted network exactly the pre-trained one, the authors' code uses 0.02.
    """

    init_std: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.init_std, (int, float)) or isinstance(self.init_std, bool) or self.init_std < 0:
            raise ValueError(f"SSF init_std must be a non-negative number, got {self.init_std!r}")
        self.init_std = float(self.init_std)


def ssf_refusal(name: str, module: nn.Module) -> str | None:
    """Why SSF cannot follow ``module`` (``None``: it can): ``nn.Linear`` and ``nn.Conv2d`` of any ``groups``, except
    weight-standardising convolutions."""
    if not isinstance(module, (nn.Linear, nn.Conv2d)) or isinstance(module, adapter_module_types()):
        return (
            f"{name!r}, a {type(module).__name__}; SSF scales and shifts the outputs of nn.Linear and nn.Conv2d only: "
            "make the pattern name the layer itself (e.g. 'attn.qkv', not 'attn')"
        )
    if isinstance(module, _STANDARDISING_CONVS):
        return (
            f"{name!r}, a {type(module).__name__}, which standardises its weight in forward: SSF's scale could not be "
            "folded into that weight (the method would not merge)"
        )
    return None


class SSFLayer(AdapterLayer):
    """SSF after an ``nn.Linear`` or an ``nn.Conv2d`` (any ``groups``).

    Args:
        base_layer: the frozen layer.
        config: the initialisation noise.
    """

    accepts_grouped_conv = True  # SSF scales output channels, which any group layout allows

    def __init__(self, base_layer: nn.Module, config: SSFConfig) -> None:
        refusal = ssf_refusal("base_layer", base_layer)
        if refusal is not None:
            raise TypeError(f"SSF cannot wrap {refusal}")
        super().__init__(base_layer)
        # While merged: the weight and bias merge() overwrote, so that unmerge() restores them bit for bit.
        self.register_buffer("unmerged_weight", None, persistent=False)
        self.register_buffer("unmerged_bias", None, persistent=False)
        self.created_bias = False
        weight = self.base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.ssf_scale = nn.Parameter(torch.ones(weight.shape[0], **factory))
        self.ssf_shift = nn.Parameter(torch.zeros(weight.shape[0], **factory))
        if config.init_std > 0:
            with torch.no_grad():
                self.ssf_scale.add_(torch.randn_like(self.ssf_scale) * config.init_std)
                self.ssf_shift.add_(torch.randn_like(self.ssf_shift) * config.init_std)

    def _per_channel(self, vector: torch.Tensor) -> torch.Tensor:
        """``[out]`` shaped to broadcast over the layer's output: channels last for a Linear, at dimension ``-3`` for
        a Conv2d (``[B, out, H, W]`` or unbatched ``[out, H, W]``)."""
        return vector.reshape(-1, 1, 1) if self.is_conv else vector

    def compute_delta_weight(self) -> torch.Tensor:
        """``(gamma - 1) W0`` row by row; the bias change (``(gamma - 1) b + beta``) is not part of it."""
        weight = self.base_layer.weight
        with full_precision(weight.device):
            scale = self.ssf_scale.float().reshape(-1, *([1] * (weight.dim() - 1)))
            delta = (scale - 1) * weight.float()
        return delta.to(weight.dtype)

    def merged_bias(self) -> torch.Tensor:
        """``gamma * b + beta`` (``beta`` for a layer without bias), the bias :meth:`merge` writes."""
        bias = self.base_layer.bias
        with full_precision(self.ssf_scale.device):
            merged = (
                self.ssf_shift.float()
                if bias is None
                else self.ssf_scale.float() * bias.float() + self.ssf_shift.float()
            )
        return merged.to(self.base_layer.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        scale = self._per_channel(self.ssf_scale.to(out.dtype))
        shift = self._per_channel(self.ssf_shift.to(out.dtype))
        return out * scale + shift

    @torch.no_grad()
    def merge(self, safe: bool = False) -> None:
        """Write ``diag(gamma) W`` and ``gamma * b + beta`` into the base layer (creating its bias if it has none).

        Args:
            safe: check that the merged weight and bias are finite before writing them.
        """
        if self.merged:
            return
        base = self.base_layer
        with full_precision(base.weight.device):  # diag(gamma) W directly, not W + (gamma - 1) W
            scale = self.ssf_scale.detach().float().reshape(-1, *([1] * (base.weight.dim() - 1)))
            weight = (scale * base.weight.float()).to(base.weight.dtype)
        delta = weight - base.weight
        bias = self.merged_bias().detach()
        if safe and not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise ValueError("NaN or inf in the merged weight or bias; the adapter is broken, refusing to merge")
        self.unmerged_weight = base.weight.detach().clone()
        self.unmerged_bias = None if base.bias is None else base.bias.detach().clone()
        base.weight.copy_(weight)
        if base.bias is None:
            base.bias = nn.Parameter(bias, requires_grad=False)
            self.created_bias = True
        else:
            base.bias.copy_(bias)
        self.merged_delta = delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put back the weight and bias :meth:`merge` overwrote (exactly); a no-op when not merged."""
        if not self.merged:
            return
        base = self.base_layer
        base.weight.copy_(self.unmerged_weight)
        if self.created_bias:
            base.bias = None
            self.created_bias = False
        else:
            base.bias.copy_(self.unmerged_bias)
        self.unmerged_weight = self.unmerged_bias = self.merged_delta = None
        self.merged = False


def _parent_applies_qkv_itself(root: nn.Module, name: str) -> bool:
    """Whether ``name`` is the fused ``qkv`` of a timm attention that runs ``F.linear(x, qkv.weight, qkv_bias)``
    (separate q / v biases, not added after the layer): it never calls the layer's forward."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    return (
        child == "qkv"
        and getattr(parent, "q_bias", None) is not None
        and not getattr(parent, "qkv_bias_separate", False)
    )


@register_adapter(
    "ssf",
    SSFConfig,
    size_knob=None,
    refuse=ssf_refusal,
    summary="per-channel scale and shift of layer outputs (Lian et al. 2022)",
)
def apply_ssf(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: SSFConfig) -> None:
    """Replace every matched layer of ``root`` by an :class:`SSFLayer`; refuses (before any change) a fused ``qkv``
    whose attention applies it with ``F.linear`` itself."""
    bypassed = [name for name, _, _ in matches if _parent_applies_qkv_itself(root, name)]
    if bypassed:
        raise ValueError(
            f"SSF cannot follow {bypassed[:4]}: their attention computes F.linear(x, qkv.weight, cat(q_bias, k_bias, "
            "v_bias)) without calling the layer, so the shift would be skipped; target the other layers "
            "(e.g. 'attn.proj', 'mlp') instead"
        )
    for name, module, _pattern in matches:
        replace_module(root, name, SSFLayer(module, config))
