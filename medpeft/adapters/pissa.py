"""PiSSA: LoRA initialised from the principal singular vectors and values (Meng, Wang, Zhang, NeurIPS 2024,
arXiv 2404.02948).

The frozen weight viewed as a matrix ``W0: [out, fan_in]`` (a Conv2d's ``[out, in * kh * kw]``) has the SVD
``W0 = U S V^T``. With ``s = alpha / r`` (``1`` by default), PiSSA starts its trainable factors at

    ``A0 = sqrt(S_r / s) V_r^T``  (``[r, fan_in]``),   ``B0 = U_r sqrt(S_r / s)``  (``[out, r]``),

so that ``s B0 A0 = U_r S_r V_r^T``, the best rank-``r`` approximation of ``W0``, whatever ``alpha`` is (the division
by ``s`` is peft's ``init_lora_weights="pissa"``; ``alpha`` then only rescales the factors, i.e. their effective
learning rate). PiSSA's default is no ``alpha / r`` scaling at all on the principal part, hence ``alpha = None``
meaning ``alpha = r``, ``s = 1``.

PiSSA itself replaces ``W0`` by the residual ``W0 - s B0 A0`` and trains ``A``, ``B`` from ``A0``, ``B0``. We write the
same function as a delta over the untouched frozen ``W0``:

    ``y = W0 x + b + s (B A - B0 A0) x``,   ``delta = s (B A - B0 A0)``,

exactly zero at init (``A``, ``B`` are bitwise ``A0``, ``B0``), and ``merge()`` adds ``delta`` to ``W0`` like any other
weight adapter: the frozen base weight never changes and stays what the pre-trained file holds.

What is saved, and why ``B0 A0`` is not: ``A`` and ``B`` are parameters, saved in the adapter file, so a round trip is
exact. ``A0``, ``B0`` are non-persistent buffers, recomputed from ``W0`` at injection (and again after
``load_state_dict`` of the whole network, whose frozen weights may not be the ones the adapter was built on: a
random-init encoder given a checkpoint). That is sound because the delta only uses the product
``B0 A0 = U_r (S_r / s) V_r^T``, which is unique up to numerics: another machine's SVD may flip the sign of a pair of
singular vectors ``(u_i, v_i)``, which flips row ``i`` of ``A0`` and column ``i`` of ``B0`` together and leaves the
product (bitwise, since only signs change) and the forward unchanged. (It is not unique when ``S_r`` has a repeated
value at position ``r``, which trained weights do not have.)

Forward: when it costs fewer multiply-adds per token, ``3 * 2 r (out + fan_in) < out * fan_in`` (the two rank-``r``
paths' forward and backward against the dense weight gradient, as tCURLoRA's rule), the layer runs the factorised
form ``base(x) + s (B (A x) - B0 (A0 x))``, ``A`` as a ``kh x kw`` convolution with the base layer's stride, padding
and dilation and ``B`` as a ``1 x 1`` one for a Conv2d (as LoRA). The two paths are computed with the same operations
on bitwise-equal operands at init, so their difference is exactly zero then. Otherwise (and for base layers whose
``forward`` is not linear in the weight, timm's ``StdConv2d``) it runs one layer of the effective weight
``W0 + delta``, the form ``merge()`` writes.

Trainable numbers: ``r * (fan_in + out)`` per layer, as LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medpeft.adapters.base import AdapterLayer, full_precision, register_adapter, replace_module

__all__ = ["PiSSAConfig", "PiSSALayer", "principal_factors"]


@dataclass
class PiSSAConfig:
    """Options of PiSSA.

    Args:
        rank: the number ``r`` of principal singular triplets the factors start from.
        alpha: scaling numerator, ``s = alpha / rank``; ``None`` means ``alpha = rank`` (``s = 1``, PiSSA's own
            setting). The principal part ``s B0 A0 = U_r S_r V_r^T`` does not depend on it (module docstring).
    """

    rank: int = 8
    alpha: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ValueError(f"PiSSA rank must be a positive int, got {self.rank!r}")
        if self.alpha is None:
            self.alpha = float(self.rank)
        if not self.alpha > 0:
            raise ValueError(f"PiSSA alpha must be positive, got {self.alpha!r}")


@torch.no_grad()
def principal_factors(weight: torch.Tensor, rank: int, scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PiSSA's initial factors of ``weight`` (viewed as ``[out, fan_in]``), computed in float32.

    Args:
        weight: the frozen weight, ``[out, in]`` or ``[out, in, kh, kw]``.
        rank: ``r``, at most ``min(out, fan_in)``.
        scaling: ``s``; the factors are scaled so that ``s * B0 @ A0 = U_r S_r V_r^T``.

    Returns:
        ``(A0 [r, fan_in], B0 [out, r])`` in float32.
    """
    with full_precision(weight.device):
        matrix = weight.detach().float().reshape(weight.shape[0], -1)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        root = (s[:rank] / scaling).sqrt()
        return root[:, None] * vh[:rank], u[:, :rank] * root


class PiSSALayer(AdapterLayer):
    """PiSSA around an ``nn.Linear`` or ``nn.Conv2d``.

    Args:
        base_layer: the frozen layer.
        config: rank and alpha.

    Raises:
        ValueError: ``rank`` exceeds ``min(out, fan_in)``.
    """

    def __init__(self, base_layer: nn.Module, config: PiSSAConfig) -> None:
        super().__init__(base_layer)
        out, fan_in = self.out_features, self.fan_in
        if config.rank > min(out, fan_in):
            raise ValueError(
                f"PiSSA rank {config.rank} exceeds min(out, fan_in) = {min(out, fan_in)} of a weight viewed as "
                f"{out} x {fan_in}"
            )
        self.rank = config.rank
        self.scaling = config.alpha / config.rank
        dtype = self.base_layer.weight.dtype
        down, up = principal_factors(self.base_layer.weight, self.rank, self.scaling)
        self.pissa_A = nn.Parameter(down.to(dtype))  # [r, fan_in]
        self.pissa_B = nn.Parameter(up.to(dtype))  # [out, r]
        # Functions of W0, rebuilt rather than saved (see the module docstring).
        self.register_buffer("pissa_A0", self.pissa_A.detach().clone(), persistent=False)
        self.register_buffer("pissa_B0", self.pissa_B.detach().clone(), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_principal_part)

    @torch.no_grad()
    def refresh_principal_part(self) -> None:
        """Recompute ``A0``, ``B0`` from the current frozen weight (after it was loaded)."""
        if self.merged:
            raise RuntimeError("load the state dict into an unmerged PiSSA model (call unmerge() first)")
        down, up = principal_factors(self.base_layer.weight, self.rank, self.scaling)
        self.pissa_A0.copy_(down)
        self.pissa_B0.copy_(up)

    def compute_delta_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        with full_precision(weight.device):
            trained = self.pissa_B.float() @ self.pissa_A.float()  # [out, r] @ [r, fan_in]
            principal = self.pissa_B0.float() @ self.pissa_A0.float()
            delta = (trained - principal) * self.scaling
        return delta.reshape(weight.shape).to(weight.dtype)

    def prefers_activation_form(self) -> bool:
        """The documented rule: the factorised form when ``3 * 2 r (out + fan_in) < out * fan_in``."""
        if not self.activation_form_allowed:
            return False
        out, fan_in = self.out_features, self.fan_in
        return 6 * self.rank * (out + fan_in) < out * fan_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.prefers_activation_form():
            return super().forward(x)
        trained = self.low_rank_forward(x, self.pissa_A, self.pissa_B)
        principal = self.low_rank_forward(x, self.pissa_A0, self.pissa_B0)
        return self.base_layer(x) + (trained - principal) * self.scaling


def _refresh_principal_part(layer: PiSSALayer, _incompatible_keys: object) -> None:
    """``load_state_dict`` post-hook: the loaded frozen weight determines ``B0 A0``."""
    layer.refresh_principal_part()


@register_adapter(
    "pissa",
    PiSSAConfig,
    size_knob="rank",
    summary="LoRA started from the principal singular vectors, delta B A - B0 A0 (Meng et al. 2024)",
)
def apply_pissa(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: PiSSAConfig) -> None:
    """Replace every matched layer of ``root`` by a :class:`PiSSALayer`."""
    for name, module, _pattern in matches:
        replace_module(root, name, PiSSALayer(module, config))
