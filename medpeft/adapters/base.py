"""The adapter contract shared by every method, and the registry of adapter methods.

Every module a method adds to a model is an :class:`AdapterModule`: its parameters (outside its ``base_layer``, the
frozen module it wraps, if any) are the adapter parameters that train, and its state (those parameters and its
persistent buffers) is what the adapter file holds. Methods that train some of the model's own tensors instead
(BitFit's biases, normalisation tuning) name them when they are applied (see :class:`AdapterMethod`). Layer types of
other libraries (``peft``'s tuner layers) join through :func:`register_adapter_module_type`.

A weight adapter (:class:`AdapterLayer`) wraps a frozen ``nn.Linear`` or ``nn.Conv2d`` (kept as ``.base_layer``) and adds a learned
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
    "AdapterModule",
    "adapter_module_types",
    "full_precision",
    "get_adapter_method",
    "register_adapter",
    "register_adapter_module_type",
    "replace_module",
    "supported_base_layer",
    "weight_layer_refusal",
]


class AdapterModule(nn.Module):
    """Marker base of every module an adapter method adds; see the module docstring.

    A subclass that wraps a frozen module keeps it as ``self.base_layer``; everything else it holds is the adapter.
    """


_MODULE_TYPES: list[type] = [AdapterModule]


def register_adapter_module_type(module_type: type) -> None:
    """Count modules of ``module_type`` (another library's adapter layers) as adapter modules."""
    if module_type not in _MODULE_TYPES:
        _MODULE_TYPES.append(module_type)


def adapter_module_types() -> tuple[type, ...]:
    """The module types whose non-``base_layer`` parameters and buffers are adapter state."""
    return tuple(_MODULE_TYPES)


def supported_base_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer type a weight adapter (:class:`AdapterLayer`) can wrap."""
    return isinstance(module, (nn.Linear, nn.Conv2d)) and not isinstance(module, adapter_module_types())


def weight_layer_refusal(name: str, module: nn.Module) -> str | None:
    """Why a weight adapter cannot wrap ``module`` (``None`` when it can): the default :attr:`AdapterMethod.refuse`.

    The reason reads after "matched": ``"'blocks.0.attn', a Attention; ..."``.

    Args:
        name: The module's qualified name, quoted in the reason.
        module: The matched module.
    """
    if not supported_base_layer(module):
        return (
            f"{name!r}, a {type(module).__name__}; this method wraps nn.Linear and nn.Conv2d only: make the pattern "
            "name the layer itself (e.g. 'attn.qkv', not 'attn')"
        )
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return (
            f"{name!r}, a grouped convolution (groups={module.groups}"
            f"{', depthwise' if module.groups == module.in_channels else ''}); this method wraps convolutions with "
            "groups=1 only: name the pointwise layers instead (EfficientNet conv_pw / conv_pwl, ConvNeXt mlp.fc1 "
            "/ mlp.fc2)"
        )
    return None


def full_precision(device: torch.device) -> torch.autocast:
    """A context with autocast off on ``device``, for building adapter deltas from float32 operands."""
    return torch.autocast(device_type=device.type, enabled=False)


class AdapterLayer(AdapterModule):
    """A frozen base layer plus a trainable additive weight delta.

    Subclasses implement :meth:`compute_delta_weight`; they may override :meth:`forward` with a cheaper
    factorised path as long as it computes ``layer(x; W0 + delta)`` (which rules it out when
    :attr:`plain_base_layer` is false: a subclass's ``forward`` need not be linear in the weight).

    Args:
        base_layer: the pre-trained ``nn.Linear`` (weight ``[out, in]``) or ``nn.Conv2d`` (weight
            ``[out, in, kh, kw]``, ``groups == 1``). It is frozen and kept as ``self.base_layer``.
    """

    #: Whether the delta may wrap a grouped / depthwise convolution (SSF's per-output-channel scale respects any group
    #: layout; a general weight delta would mix the groups).
    accepts_grouped_conv: bool = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if not supported_base_layer(base_layer):
            raise TypeError(f"adapters wrap nn.Linear or nn.Conv2d, got {type(base_layer).__name__}")
        if isinstance(base_layer, nn.Conv2d) and base_layer.groups != 1 and not self.accepts_grouped_conv:
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


Matches = list[tuple[str, nn.Module, str]]


@dataclass(frozen=True)
class AdapterMethod:
    """A registered adapter method: how it is applied and the facts the rest of medpeft asks of it.

    Args:
        name: Lower-case name used in configs (``"lora"``).
        config_cls: Dataclass holding and validating the method's options.
        apply: ``apply(root, matches, config) -> list[str] | None`` changes ``root`` for the matched
            ``(name, module, pattern)`` (wrapping each layer, or inserting modules); it may return the qualified names
            of ``root``'s own parameters that train too (BitFit's biases), ``None`` when there are none.
        size_knob: The option of ``config_cls`` that sets the adapter's size (``"rank"``, ``"bottleneck"``), which
            ``adapter.budget`` chooses; ``None`` for methods of fixed size (BitFit).
        merge_refusal: ``None`` when :func:`~medpeft.adapters.merge_adapters` can fold the method into the plain
            network, otherwise why it cannot (shown to the user).
        refuse: ``refuse(name, module) -> str | None``: why a matched module cannot take this method (``None``: it
            can); by default :func:`weight_layer_refusal`.
        encoder_lr_scale: ``optim.encoder_lr`` is ``optim.lr`` times this when the config leaves it unset.
        adapt_norm: Default of ``adapter.adapt_norm`` (whether the encoder's BatchNorm statistics follow the data).
        cleanup: ``cleanup(root)`` removes what ``apply`` added besides the wrapped layers (shared modules, hooks);
            run when injection fails halfway and when adapters are unloaded.
        on_step: ``on_step(root, global_step)`` after every optimizer step, before gradients are zeroed (AdaLoRA's
            rank allocator); ``None`` for most methods.
        prepare: ``prepare(root, total_steps)`` once before training (AdaLoRA's schedule needs the step count).
        regularization: ``regularization(root) -> Tensor | None``, a penalty added to the loss with
            ``adapter.reg_weight`` besides the layers' own (AdaLoRA's orthogonality term).
        default_targets: Targets a sweep gives this method when it swaps methods on one base config, for methods
            that do not adapt weight layers (``("mlp-module",)`` for AdaptFormer, ``("blocks",)`` for VPT);
            ``None``: the base config's targets.
        source: Who implements it: ``"medpeft"`` or ``"peft"`` (shown in tables).
        summary: One line for tables and ``--help``.
    """

    name: str
    config_cls: type
    apply: Callable[[nn.Module, Matches, Any], list[str] | None]
    size_knob: str | None = None
    merge_refusal: str | None = None
    refuse: Callable[[str, nn.Module], str | None] = weight_layer_refusal
    encoder_lr_scale: float = 10.0
    adapt_norm: bool = True
    cleanup: Callable[[nn.Module], None] | None = None
    on_step: Callable[[nn.Module, int], None] | None = None
    prepare: Callable[[nn.Module, int], None] | None = None
    regularization: Callable[[nn.Module], torch.Tensor | None] | None = None
    default_targets: tuple[str, ...] | None = None
    source: str = "medpeft"
    summary: str = ""


ADAPTERS: dict[str, AdapterMethod] = {}


def register_adapter(name: str, config_cls: type, **facts: Any) -> Callable:
    """Decorator registering ``apply`` under ``name`` (lower-case, unique); ``facts`` are the other fields of
    :class:`AdapterMethod`."""
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"adapter names must be lower-case identifiers, got {name!r}")
    if name in ADAPTERS:
        raise ValueError(f"adapter {name!r} is already registered")

    def decorator(apply: Callable) -> Callable:
        ADAPTERS[name] = AdapterMethod(name=name, config_cls=config_cls, apply=apply, **facts)
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
