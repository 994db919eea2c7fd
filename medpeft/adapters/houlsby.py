"""Houlsby adapter: a serial bottleneck after a sub-layer (Houlsby et al., ICML 2019, arXiv 1902.00751).

A wrapped module ``f`` (a transformer block's attention ``attn`` or MLP ``mlp``: presets ``attn-module`` and
``mlp-module``) becomes

``h = f(x)``, ``y = h + W_up GELU(W_down h + b_down) + b_up``

with ``W_down: [m, D]``, ``W_up: [D, m]`` and ``D`` the width of ``f``'s output, read as the ``out_features`` of the
last ``nn.Linear`` in ``f`` (``named_modules`` order: ``attn.proj``, ``mlp.fc2``); a bare ``nn.Linear`` may be wrapped
too (``D`` is its ``out_features``); a module without an ``nn.Linear`` is refused. The adapter sits before the block's
residual addition (and its layer scale / drop path), as in the paper's Figure 2.

Initialisation: ``W_down`` from a zero-mean Gaussian with std ``1e-2`` truncated at two standard deviations (the
paper's near-identity init); ``W_up``, ``b_down`` and ``b_up`` zeros, so the wrapped module is exactly ``f`` at
initialisation (the paper draws ``W_up`` from the same Gaussian; zero makes the identity exact). The paper also
trains the layer norms; here only the adapters train.

Not mergeable: the GELU bottleneck after the layer is not a weight change.
Trainable numbers per wrapped module: ``2 D m + m + D`` (both projections with their biases).

The helpers :func:`linear_layers` and :func:`bottleneck_refusal` are shared with AdaptFormer
(:mod:`medpeft.adapters.adaptformer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.adapters.base import AdapterModule, Matches, register_adapter, replace_module

__all__ = ["HoulsbyAdapter", "HoulsbyConfig", "bottleneck_refusal", "check_not_nested", "linear_layers"]


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` layers of ``module`` (itself included) in ``named_modules`` order."""
    return [layer for layer in module.modules() if isinstance(layer, nn.Linear)]


def bottleneck_refusal(method: str) -> Callable[[str, nn.Module], str | None]:
    """The ``refuse`` of a bottleneck adapter around a module: it needs an ``nn.Linear`` inside to read its width."""

    def refuse(name: str, module: nn.Module) -> str | None:
        if not linear_layers(module):
            return (
                f"{name!r}, a {type(module).__name__} without any nn.Linear; {method} wraps modules whose width is "
                "read from their nn.Linear layers (a block's attention or MLP: presets 'attn-module', 'mlp-module')"
            )
        return None

    return refuse


def check_not_nested(method: str, matches: Matches) -> None:
    """Refuse matches of which one lies inside another (``blocks.0`` and ``blocks.0.attn``): wrapping both would put
    one adapter inside the other's frozen module."""
    names = {name for name, _, _ in matches}
    for inner in sorted(names):
        parts = inner.split(".")
        outer = next((".".join(parts[:k]) for k in range(1, len(parts)) if ".".join(parts[:k]) in names), None)
        if outer is not None:
            raise ValueError(
                f"{method} matched both {outer!r} and {inner!r}, one inside the other; choose targets that do not "
                "nest (e.g. 'attn-module' and 'mlp-module')"
            )


@dataclass
class HoulsbyConfig:
    """Options of the Houlsby adapter.

    Args:
        bottleneck: the adapter's inner width ``m``.
    """

    bottleneck: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.bottleneck, int) or isinstance(self.bottleneck, bool) or self.bottleneck <= 0:
            raise ValueError(f"houlsby bottleneck must be a positive int, got {self.bottleneck!r}")


class HoulsbyAdapter(AdapterModule):
    """``f(x) + up(GELU(down(f(x))))`` around a frozen module ``f``; see the module docstring.

    Args:
        base_layer: the frozen module ``f``, containing at least one ``nn.Linear``; its output's last axis has the
            width of its last ``nn.Linear``.
        config: the bottleneck width.
    """

    def __init__(self, base_layer: nn.Module, config: HoulsbyConfig) -> None:
        super().__init__()
        linears = linear_layers(base_layer)
        if not linears:
            raise TypeError(f"houlsby wraps modules containing an nn.Linear, got {type(base_layer).__name__}")
        last = linears[-1]
        self.base_layer = base_layer.requires_grad_(False)
        self.dim, self.bottleneck = last.out_features, config.bottleneck
        factory = {"device": last.weight.device, "dtype": last.weight.dtype}
        self.houlsby_down = nn.Linear(self.dim, self.bottleneck, **factory)
        self.houlsby_up = nn.Linear(self.bottleneck, self.dim, **factory)
        with torch.no_grad():
            nn.init.trunc_normal_(self.houlsby_down.weight, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.zeros_(self.houlsby_down.bias)
            nn.init.zeros_(self.houlsby_up.weight)
            nn.init.zeros_(self.houlsby_up.bias)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """``f``'s arguments (timm attention takes ``attn_mask`` / ``rope``) are passed through unchanged."""
        hidden = self.base_layer(*args, **kwargs)
        return hidden + self.houlsby_up(F.gelu(self.houlsby_down(hidden)))


@register_adapter(
    "houlsby",
    HoulsbyConfig,
    size_knob="bottleneck",
    merge_refusal="a nonlinear (GELU) bottleneck after the layer is not a weight change",
    refuse=bottleneck_refusal("houlsby"),
    default_targets=("attn-module", "mlp-module"),
    summary="serial bottleneck adapter after attention and MLP (Houlsby et al. 2019)",
)
def apply_houlsby(root: nn.Module, matches: Matches, config: HoulsbyConfig) -> None:
    """Replace every matched module of ``root`` by a :class:`HoulsbyAdapter` around it."""
    check_not_nested("houlsby", matches)
    for name, module, _pattern in matches:
        replace_module(root, name, HoulsbyAdapter(module, config))
