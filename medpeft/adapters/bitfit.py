"""BitFit: train the bias terms only (Ben Zaken et al., ACL 2022, arXiv 2106.10199).

``y = W0 x + b`` with ``W0`` frozen and ``b`` trained, for every matched module that has a bias of its own. Nothing
is wrapped and nothing is added: the trained tensors are the network's own, so the adapted network is the plain one
at initialisation and merging is a no-op. They are saved to (and loaded from) the adapter file by name.

Which tensors: every parameter called ``bias`` that a matched module holds itself (``module.bias`` an
``nn.Parameter``: linear and convolution biases, and the ``beta`` of LayerNorm / BatchNorm / GroupNorm, so that on
CNNs whose convolutions have no bias, ResNet's and EfficientNet-Lite's, BitFit trains the BatchNorm shifts, as BitFit
for CNNs does in the literature), plus the separate ``q_bias`` / ``k_bias`` / ``v_bias`` parameters of timm's
attention (BEiT, EVA, Swin-V2), which stand for the bias of their fused ``qkv`` layer (that layer then has none of
its own; BEiT's zero ``k_bias`` is a buffer and stays fixed). Other tensors named like biases (Swin's
``relative_position_bias_table``) are position embeddings, not bias terms, and do not train. The default targets are
the ``all`` preset, which skips modules without a bias silently; a pattern naming such a module is refused.
Trainable numbers: the sum of those biases' sizes (``out`` per linear / convolution, ``C`` per normalisation layer).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medpeft.adapters.base import register_adapter

__all__ = ["BIAS_NAMES", "BitFitConfig", "bias_parameter_names", "bitfit_refusal"]

#: Names of a module's own parameters that BitFit trains.
BIAS_NAMES = ("bias", "q_bias", "k_bias", "v_bias")


@dataclass
class BitFitConfig:
    """BitFit has no options: which biases train is set by the targets."""


def bias_parameter_names(module: nn.Module) -> list[str]:
    """Names of the bias parameters ``module`` holds itself (not its submodules'), in registration order."""
    return [name for name, _ in module.named_parameters(recurse=False) if name in BIAS_NAMES]


def bitfit_refusal(name: str, module: nn.Module) -> str | None:
    """Why BitFit has nothing to train in ``module`` (``None``: it has a bias parameter of its own)."""
    if bias_parameter_names(module):
        return None
    return (
        f"{name!r}, a {type(module).__name__} without a bias parameter of its own; BitFit trains the biases of the "
        "matched modules: name layers with a bias (or their normalisation layers), or use the 'all' preset"
    )


@register_adapter(
    "bitfit",
    BitFitConfig,
    size_knob=None,
    refuse=bitfit_refusal,
    default_targets=("all",),
    summary="bias terms only (Ben Zaken et al. 2022)",
)
def apply_bitfit(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: BitFitConfig) -> list[str]:
    """Change nothing; return the qualified names of the matched modules' biases, which then train."""
    return [f"{name}.{bias}" for name, module, _pattern in matches for bias in bias_parameter_names(module)]
