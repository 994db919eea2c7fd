"""The adapter contract shared by LoRA, TRM and tCURLoRA, and the registry of adapter methods.

An adapter wraps a frozen ``nn.Linear`` or ``nn.Conv2d`` (kept as ``.base_layer``) and adds a learned
``delta_weight()`` of exactly the base weight's shape, so that ``merge()`` can fold it into the plain
layer (zero inference overhead) and ``unmerge()`` can take it out again. The layout follows peft's
``LycorisLayer`` trimmed to a single adapter per layer (see ../shared/STYLE.md, section 2 of "adopt").

Subclasses of ``nn.Linear``/``nn.Conv2d`` with their own ``forward`` (timm's ``StdConv2d``, which standardises
its weight inside ``forward``) are run through that ``forward`` with the substituted weight
(``torch.func.functional_call``), so the adapted layer computes ``layer(x; W0 + delta)``, exactly what
``merge()`` produces. Parents that read ``.weight`` and call ``F.linear`` themselves (timm's Eva, BEiT and
Swin-V2 attention with separate q/v biases) see the effective weight through :attr:`AdapterLayer.weight`.

Deltas are built in float32 with autocast off (:func:`full_precision`): in half precision TRM's ``T - I``
has percent-level relative error and is not even exactly zero at init.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ADAPTERS",
    "AdapterLayer",
    "AdapterMethod",
    "full_precision",
    "get_adapter_method",
    "register_adapter",
    "replace_module",
    "supported_base_layer",
]


def supported_base_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer type every adapter method can wrap."""
    return isinstance(module, (nn.Linear, nn.Conv2d)) and not isinstance(module, AdapterLayer)


def full_precision(device: torch.device) -> torch.autocast:
    """A context with autocast off on ``device``, for building adapter deltas from float32 operands."""
    return torch.autocast(device_type=device.type, enabled=False)


class AdapterLayer(nn.Module):
    """A frozen base layer plus a trainable additive weight delta.

    Subclasses implement :meth:`compute_delta_weight`; they may override :meth:`forward` with a cheaper
    factorised path as long as it computes ``layer(x; W0 + delta)`` (which rules it out when
    :attr:`plain_base_layer` is false: a subclass's ``forward`` need not be linear in the weight).

    Args:
        base_layer: the pre-trained ``nn.Linear`` (weight ``[out, in]``) or ``nn.Conv2d`` (weight
            ``[out, in, kh, kw]``, ``groups == 1``). It is frozen and kept as ``self.base_layer``.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if not supported_base_layer(base_layer):
            raise TypeError(f"adapters wrap nn.Linear or nn.Conv2d, got {type(base_layer).__name__}")
        if isinstance(base_layer, nn.Conv2d) and base_layer.groups != 1:
            raise ValueError(f"grouped/depthwise convolutions (groups={base_layer.groups}) are not supported")
        self.base_layer = base_layer.requires_grad_(False)
        self.merged = False
        # The delta that was folded in, so that unmerge() removes exactly what merge() added even for
        # adapters whose delta depends on the base weight (TRM's W0 (T - I)).
        self.register_buffer("merged_delta", None, persistent=False)

    @property
    def is_conv(self) -> bool:
        return isinstance(self.base_layer, nn.Conv2d)

    @property
    def plain_base_layer(self) -> bool:
        """Whether the base layer runs ``nn.Linear``/``nn.Conv2d``'s forward (its class does not override it)."""
        return type(self.base_layer).forward in (nn.Linear.forward, nn.Conv2d.forward)

    @property
    def in_features(self) -> int:
        """Input features (Linear) or input channels (Conv2d)."""
        return self.base_layer.in_features if not self.is_conv else self.base_layer.in_channels

    @property
    def out_features(self) -> int:
        """Output features (Linear) or output channels (Conv2d)."""
        return self.base_layer.out_features if not self.is_conv else self.base_layer.out_channels

    @property
    def fan_in(self) -> int:
        """Columns of the weight viewed as a matrix: ``in`` (Linear) or ``in * kh * kw`` (Conv2d)."""
        return self.base_layer.weight[0].numel()

    def compute_delta_weight(self) -> torch.Tensor:
        """The current delta, shaped like ``base_layer.weight`` and of its dtype; valid while unmerged.

        Implementations build it in float32 under :func:`full_precision` and cast the result.
        """
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """Tensor of the base weight's shape such that ``W0 + delta`` reproduces this layer."""
        if self.merged:
            return self.merged_delta
        return self.compute_delta_weight()

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``W0 + delta`` (``W0`` itself once merged), shaped like ``base_layer.weight``.

        For parents that call ``F.linear(x, self.qkv.weight, qkv_bias)`` themselves (timm's Eva, BEiT and
        Swin-V2 attention with separate q/v biases): they then compute with the adapted weight too. LoRA's
        dropout is not applied on that path.
        """
        if self.merged:
            return self.base_layer.weight
        return self.base_layer.weight + self.compute_delta_weight()

    def layer_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Run the base layer's operation (bias, stride, padding included) with another weight.

        A subclass with its own ``forward`` (timm's ``StdConv2d`` standardises the weight there) runs that
        ``forward`` with ``weight`` substituted, so that it sees exactly what :meth:`merge` would write.
        """
        if not self.plain_base_layer:
            return torch.func.functional_call(self.base_layer, {"weight": weight}, (x,))
        if self.is_conv:
            return self.base_layer._conv_forward(x, weight, self.base_layer.bias)
        return F.linear(x, weight, self.base_layer.bias)

    def low_rank_forward(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """``(up @ down) x`` without forming the product: ``x -> down -> up`` as LoRA's two layers do.

        Args:
            x: the base layer's input, ``[..., in]`` (Linear) or ``[B, in, H, W]`` (Conv2d).
            down: ``[k, fan_in]``; for a Conv2d it runs as a ``kh x kw`` convolution with the base layer's stride,
                padding and dilation.
            up: ``[out, k]``; a 1x1 convolution for a Conv2d.

        Returns:
            The output of a bias-free layer of weight ``up @ down`` (reshaped to the base weight's shape).
        """
        if not self.is_conv:
            return F.linear(F.linear(x, down), up)
        conv = self.base_layer
        kernel = down.reshape(down.shape[0], *conv.weight.shape[1:])
        hidden = F.conv2d(x, kernel, None, conv.stride, conv.padding, conv.dilation)
        return F.conv2d(hidden, up[:, :, None, None])

    @property
    def activation_form_allowed(self) -> bool:
        """Whether a factorised forward ``base(x') + delta-part(x)`` may replace the effective-weight forward:
        the base layer must be a plain ``nn.Linear``/``nn.Conv2d`` (linear in its weight) with zero padding."""
        return self.plain_base_layer and getattr(self.base_layer, "padding_mode", "zeros") == "zeros"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        # One matmul/conv with the effective weight: cheaper than base(x) + delta(x) for dense deltas.
        return self.layer_forward(x, self.weight)

    @torch.no_grad()
    def merge(self, safe: bool = False) -> None:
        """Fold the delta into ``base_layer.weight``; afterwards the forward is the plain layer's.

        Args:
            safe: check that the merged weight is finite before writing it.
        """
        if self.merged:
            return
        weight = self.base_layer.weight
        delta = self.compute_delta_weight().detach()
        if safe and not torch.isfinite(weight + delta).all():
            raise ValueError("NaN or inf in the merged weight; the adapter is broken, refusing to merge")
        weight.add_(delta)
        self.merged_delta = delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract what :meth:`merge` added; a no-op when not merged."""
        if not self.merged:
            return
        self.base_layer.weight.sub_(self.merged_delta)
        self.merged_delta = None
        self.merged = False

    def regularization(self) -> torch.Tensor | None:
        """An optional penalty on the adapter's parameters (TRM); ``None`` when the method has none."""
        return None


@dataclass(frozen=True)
class AdapterMethod:
    """A registered adapter method.

    Args:
        name: lower-case name used in configs (``"lora"``).
        config_cls: dataclass holding and validating the method's options.
        apply: ``apply(root, matches, config) -> None`` replaces each matched ``(name, module, pattern)``
            in ``root`` by its adapter layer.
    """

    name: str
    config_cls: type
    apply: Callable[[nn.Module, list[tuple[str, nn.Module, str]], Any], None]


ADAPTERS: dict[str, AdapterMethod] = {}


def register_adapter(name: str, config_cls: type) -> Callable:
    """Decorator registering ``apply`` under ``name`` (lower-case, unique)."""
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"adapter names must be lower-case identifiers, got {name!r}")
    if name in ADAPTERS:
        raise ValueError(f"adapter {name!r} is already registered")

    def decorator(apply: Callable) -> Callable:
        ADAPTERS[name] = AdapterMethod(name=name, config_cls=config_cls, apply=apply)
        return apply

    return decorator


def get_adapter_method(name: str) -> AdapterMethod:
    """Look up a registered method, with the valid names in the error."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter method {name!r}; available: {sorted(ADAPTERS)}")
    return ADAPTERS[name]


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (dotted, as in ``named_modules``) sits in ``root``."""
    parent_name, _, child_name = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child_name, new)
