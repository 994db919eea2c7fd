"""CURLoRA: a CUR decomposition of the frozen weight whose core trains (Fawi 2024, arXiv 2408.14572).

Per layer, the frozen weight viewed as a matrix ``W0: [out, fan_in]`` (a Conv2d's ``[out, in * kh * kw]``) gives

    ``C = W0[:, I]``  (``[out, r]``),   ``R = W0[J, :]``  (``[r, fan_in]``),   ``delta = C U R``,

with a trainable core ``U: [r, r]`` initialised to zero, so the layer is exactly the base layer at init, and
``merge()`` adds ``C U R`` to ``W0``.

Selection with inverted probabilities (the paper's choice, which keeps the update in the span of the columns and
rows that carry the *least* energy, to limit forgetting): column ``j`` is drawn with probability
``p_j = (1 / ||W0[:, j]||^2) / sum_k (1 / ||W0[:, k]||^2)`` (the inverse of the usual CUR probability
``||W0[:, j]||^2 / ||W0||_F^2``, renormalised), rows likewise from the row norms. To make it deterministic, ``r``
columns and then ``r`` rows are drawn without replacement by ``torch.multinomial`` on the CPU, in float64, from a
``torch.Generator`` seeded with the option ``seed`` afresh for every layer (so a layer's selection depends only on its
own weight and the seed, not on which other layers are adapted). Two departures from the reference code, which draws
with replacement from ``1 / (p + 0.001)``: without replacement ``C`` and ``R`` never repeat a column or row (a
repeat would waste rank), and the probabilities are the inverted ones exactly (columns of zero norm, which would
only contribute zeros, get probability zero). Both index sets are sorted ascending.

The indices are integer persistent buffers ``col_index`` / ``row_index``: the adapter file holds them and loading
checks them equal (the same base weights and seed must give the same selection; other weights are refused). ``C`` and
``R`` are read from the frozen weight at the stored indices in every forward pass (a gather of ``r (out + fan_in)``
numbers), so they always follow the weight that is loaded, and nothing else is stored.

Forward: when it costs fewer multiply-adds per token, ``3 r (out + fan_in) < out * fan_in``, the layer runs
``base(x) + (C U) (R x)`` (``R`` as a ``kh x kw`` convolution with the base layer's stride, padding and dilation, ``C U``
as a ``1 x 1`` one for a Conv2d, as LoRA's pair); otherwise one layer of the effective weight ``W0 + C U R``.

Trainable numbers: ``r^2`` per layer.

Learning rate: like tCURLoRA's cores, ``U`` is scaled by a product of two weight slices (``~0.02`` each in a random-init
ViT), so a step moves the output ~``||C|| ||R||`` times less than a LoRA factor's step: the registry's
``encoder_lr_scale`` is tCURLoRA's 100 (``optim.encoder_lr = 100 * optim.lr`` when unset), not LoRA's 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medpeft.adapters.base import AdapterLayer, full_precision, register_adapter, replace_module

__all__ = ["CURLoRAConfig", "CURLoRALayer", "inverted_probabilities", "select_inverted_indices"]


@dataclass
class CURLoRAConfig:
    """Options of CURLoRA.

    Args:
        rank: the number ``r`` of selected columns and rows (``U`` is ``r x r``).
        seed: seed of the generator the columns and rows are drawn with (module docstring).
    """

    rank: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ValueError(f"CURLoRA rank must be a positive int, got {self.rank!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"CURLoRA seed must be a non-negative int, got {self.seed!r}")


def inverted_probabilities(squared_norms: torch.Tensor) -> torch.Tensor:
    """``p_j`` proportional to ``1 / squared_norms[j]`` and normalised; zero where the norm is zero."""
    positive = squared_norms > 0
    inverted = torch.where(positive, 1.0 / torch.where(positive, squared_norms, 1.0), 0.0)
    return inverted / inverted.sum()


def select_inverted_indices(matrix: torch.Tensor, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw CURLoRA's ``rank`` columns, then rows, of ``matrix`` (``[out, fan_in]``) without replacement.

    Returns:
        ``(col_index [rank], row_index [rank])``, int64 on the CPU, each sorted ascending.

    Raises:
        ValueError: fewer than ``rank`` non-zero columns or rows.
    """
    squared = matrix.detach().double().cpu().square()
    generator = torch.Generator().manual_seed(seed)
    indices = []
    for what, norms in (("columns", squared.sum(0)), ("rows", squared.sum(1))):
        nonzero = int(torch.count_nonzero(norms))
        if nonzero < rank:
            raise ValueError(
                f"CURLoRA rank {rank} exceeds the {nonzero} non-zero {what} of a {list(matrix.shape)} weight"
            )
        drawn = torch.multinomial(inverted_probabilities(norms), rank, replacement=False, generator=generator)
        indices.append(drawn.sort().values)
    return indices[0], indices[1]


class CURLoRALayer(AdapterLayer):
    """CURLoRA around an ``nn.Linear`` or ``nn.Conv2d``.

    Args:
        base_layer: the frozen layer.
        config: rank and seed.

    Raises:
        ValueError: ``rank`` exceeds ``min(out, fan_in)``.
    """

    def __init__(self, base_layer: nn.Module, config: CURLoRAConfig) -> None:
        super().__init__(base_layer)
        out, fan_in = self.out_features, self.fan_in
        if config.rank > min(out, fan_in):
            raise ValueError(
                f"CURLoRA rank {config.rank} exceeds min(out, fan_in) = {min(out, fan_in)} of a weight viewed as "
                f"{out} x {fan_in}"
            )
        weight = self.base_layer.weight
        col_index, row_index = select_inverted_indices(weight.reshape(out, fan_in), config.rank, config.seed)
        self.register_buffer("col_index", col_index.to(weight.device))
        self.register_buffer("row_index", row_index.to(weight.device))
        self.curlora_U = nn.Parameter(torch.zeros(config.rank, config.rank, device=weight.device, dtype=weight.dtype))

    @property
    def rank(self) -> int:
        return self.curlora_U.shape[0]

    def cur_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C [out, r], R [r, fan_in])`` read from the frozen weight; valid while unmerged."""
        matrix = self.base_layer.weight.reshape(self.out_features, -1)
        return matrix[:, self.col_index], matrix[self.row_index]

    def compute_delta_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        c, r = self.cur_factors()
        with full_precision(weight.device):
            delta = (c.float() @ self.curlora_U.float()) @ r.float()  # [out, r] @ [r, r] @ [r, fan_in]
        return delta.reshape(weight.shape).to(weight.dtype)

    def prefers_activation_form(self) -> bool:
        """The documented rule: the factorised form when ``3 r (out + fan_in) < out * fan_in``."""
        if not self.activation_form_allowed:
            return False
        out, fan_in = self.out_features, self.fan_in
        return 3 * self.rank * (out + fan_in) < out * fan_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.prefers_activation_form():
            return super().forward(x)
        c, r = self.cur_factors()
        return self.base_layer(x) + self.low_rank_forward(x, r, c @ self.curlora_U)


@register_adapter(
    "curlora",
    CURLoRAConfig,
    size_knob="rank",
    encoder_lr_scale=100.0,
    summary="CUR of each weight from inverted-probability columns / rows, core U trains (Fawi 2024)",
)
def apply_curlora(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: CURLoRAConfig) -> None:
    """Replace every matched layer of ``root`` by a :class:`CURLoRALayer`."""
    for name, module, _pattern in matches:
        replace_module(root, name, CURLoRALayer(module, config))
