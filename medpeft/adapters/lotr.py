"""LoTR: low tensor rank weight adaptation, a Tucker-2 update shared by layers (Bershatsky et al. 2024,
arXiv 2402.01376).

The adapted layers of one weight shape form a group (tCURLoRA's ``"shape"`` grouping, on the full weight shape, so a
``3 x 3`` and a ``1 x 1`` convolution never share one). Their weights viewed as matrices ``[out, fan_in]`` (a
Conv2d's ``[out, in * kh * kw]``) are stacked into ``W: [n, out, fan_in]``, and every member ``l`` gets

    ``delta_l = A G_l B^T``,   ``A: [out, r]`` and ``B: [fan_in, r]`` shared by the group,  ``G_l: [r, r]`` its own,

the update tensor ``[n, out, fan_in]`` in Tucker-2 form with the layer mode left uncompressed.

Init (Tucker-2 / HOSVD of the frozen weights): ``A`` = the top-``r`` left singular vectors of the mode-1 unfolding
``[out, n * fan_in]`` (the members side by side), ``B`` = the top-``r`` left singular vectors of the mode-2 unfolding
``[fan_in, n * out]`` (from the eigenvectors of the smaller float64 Gram matrix of each unfolding, see
:func:`tucker2_factors`); the cores ``G_l`` start at zero, so every delta is exactly zero at init. By default only the
cores train and ``A``, ``B`` stay frozen; they are persistent float buffers of the group module
(:class:`LoTRGroup`, in the root's ``lotr_groups``) and are saved in the adapter file: the signs of singular vectors
may differ on another machine or library version, and the cores were trained against these exact ``A``, ``B``, so
loading a file restores them instead of trusting a recomputation. With ``train_factors=True``, ``A`` and ``B`` are
parameters and train too, as in the LoTR paper, which trains all three factors; they start from the same HOSVD and
the cores at zero (so at the first step only the cores receive a gradient: ``dL/dA = dL/dDelta B G^T = 0``).

Forward: when it costs fewer multiply-adds per token, ``3 r (out + fan_in) < out * fan_in``, a layer runs
``base(x) + (A G_l) (B^T x)`` (``B^T`` as a ``kh x kw`` convolution with the base layer's stride, padding and dilation,
``A G_l`` as a ``1 x 1`` one for a Conv2d); otherwise one layer of the effective weight ``W0 + A G_l B^T``, which is
also what ``merge()`` writes. Deltas are built in float32 with autocast off.

Trainable numbers: ``n r^2`` per group (``sum`` over groups: ``r^2`` per adapted layer), plus ``(out + fan_in) r``
per group with ``train_factors``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from medpeft.adapters.base import AdapterLayer, AdapterModule, full_precision, register_adapter, replace_module

__all__ = ["LoTRConfig", "LoTRGroup", "LoTRLayer", "remove_lotr_groups", "tucker2_factors"]

GROUPS_ATTRIBUTE = "lotr_groups"


@dataclass
class LoTRConfig:
    """Options of LoTR.

    Args:
        rank: the Tucker rank ``r`` of both shared factors (each core is ``r x r``).
        train_factors: also train the shared factors ``A``, ``B`` (the paper's setting); by default only the cores.
    """

    rank: int = 8
    train_factors: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ValueError(f"LoTR rank must be a positive int, got {self.rank!r}")
        if not isinstance(self.train_factors, bool):
            raise ValueError(f"LoTR train_factors must be a bool, got {self.train_factors!r}")  # noqa: TRY004


@torch.no_grad()
def tucker2_factors(weights: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HOSVD factors of the stacked matrices ``weights: [n, out, fan_in]``, computed in float64, as float32.

    Returns:
        ``(A [out, r], B [fan_in, r])``: the top-``r`` left singular vectors of the mode-1 unfolding
        ``[out, n * fan_in]`` and of the mode-2 unfolding ``[fan_in, n * out]``.
    """
    with full_precision(weights.device):
        stacked = weights.detach().double()
        n, out, fan_in = stacked.shape
        mode1 = stacked.permute(1, 0, 2).reshape(out, n * fan_in)
        mode2 = stacked.permute(2, 0, 1).reshape(fan_in, n * out)
        return _top_left_singular_vectors(mode1, rank), _top_left_singular_vectors(mode2, rank)


def _top_left_singular_vectors(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading left singular vectors of a float64 ``matrix`` as float32 ``[rows, rank]``.

    Computed from the eigenvectors of the smaller Gram matrix (3-8 times faster than an SVD of an unfolding on a CPU;
    in float64, squaring the condition number costs nothing that float32 factors would show): ``M M^T`` directly, or,
    for a tall ``M``, ``U_r = M V_r / sigma_r`` from ``M^T M = V S^2 V^T`` (an SVD when a ``sigma`` is near zero).
    """
    rows, cols = matrix.shape
    if rows <= cols:
        eigenvectors = torch.linalg.eigh(matrix @ matrix.T).eigenvectors  # eigenvalues ascending
        return eigenvectors[:, -rank:].flip(-1).float().contiguous()
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix.T @ matrix)
    sigma = eigenvalues[-rank:].flip(-1).clamp_min(0).sqrt()
    if sigma[-1] <= 1e-6 * sigma[0]:
        return torch.linalg.svd(matrix, full_matrices=False).U[:, :rank].float().contiguous()
    return ((matrix @ eigenvectors[:, -rank:].flip(-1)) / sigma).float().contiguous()


class LoTRGroup(AdapterModule):
    """The shared factors of one group of same-shape layers.

    Args:
        weights: the members' frozen weights as matrices, stacked in model traversal order: ``[n, out, fan_in]``.
        rank: ``r``.
        members: the members' qualified names, in the same order.
        train_factors: make ``A`` and ``B`` parameters instead of buffers.
    """

    def __init__(self, weights: torch.Tensor, rank: int, members: list[str], train_factors: bool = False) -> None:
        super().__init__()
        _, out, fan_in = weights.shape
        if rank > min(out, fan_in):
            raise ValueError(f"LoTR rank {rank} exceeds min(out, fan_in) = {min(out, fan_in)} of {out} x {fan_in}")
        self.rank, self.members = rank, list(members)
        a, b = tucker2_factors(weights, rank)
        if train_factors:
            self.lotr_A = nn.Parameter(a)
            self.lotr_B = nn.Parameter(b)
        else:
            self.register_buffer("lotr_A", a)  # [out, r], saved: see the module docstring
            self.register_buffer("lotr_B", b)  # [fan_in, r]


class LoTRLayer(AdapterLayer):
    """A member of a :class:`LoTRGroup` with its own core ``lotr_G: [r, r]``.

    Args:
        base_layer: the frozen layer.
        group: the group holding ``A`` and ``B`` (a plain attribute, not a submodule: it lives in the root's
            ``lotr_groups`` so that it is counted and saved once).
    """

    def __init__(self, base_layer: nn.Module, group: LoTRGroup) -> None:
        super().__init__(base_layer)
        self.__dict__["group"] = group  # plain attribute: see Args
        self.lotr_G = nn.Parameter(torch.zeros(group.rank, group.rank, device=group.lotr_A.device))

    def compute_delta_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        a, b = self.group.lotr_A, self.group.lotr_B
        with full_precision(weight.device):
            delta = (a.float() @ self.lotr_G.float()) @ b.float().T  # [out, r] @ [r, r] @ [r, fan_in]
        return delta.reshape(weight.shape).to(weight.dtype)

    def prefers_activation_form(self) -> bool:
        """The documented rule: the factorised form when ``3 r (out + fan_in) < out * fan_in``."""
        if not self.activation_form_allowed:
            return False
        out, fan_in = self.out_features, self.fan_in
        return 3 * self.group.rank * (out + fan_in) < out * fan_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.prefers_activation_form():
            return super().forward(x)
        a, b = self.group.lotr_A, self.group.lotr_B
        return self.base_layer(x) + self.low_rank_forward(x, b.T.to(x.dtype), (a @ self.lotr_G).to(x.dtype))


def remove_lotr_groups(root: nn.Module) -> None:
    """Drop the groups from ``root`` (after the members were unloaded)."""
    if hasattr(root, GROUPS_ATTRIBUTE):
        delattr(root, GROUPS_ATTRIBUTE)


@register_adapter(
    "lotr",
    LoTRConfig,
    size_knob="rank",
    cleanup=remove_lotr_groups,
    summary="Tucker-2 update A G_l B^T, factors shared by same-shape layers, cores G_l train (Bershatsky et al. 2024)",
)
def apply_lotr(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: LoTRConfig) -> None:
    """Group the matched layers by weight shape, build each group's factors, and wrap every member.

    Groups are registered in ``root.lotr_groups`` (an ``nn.ModuleDict``), named ``g<k>_<weight shape>``.
    """
    layout: dict[tuple[int, ...], list[tuple[str, nn.Module]]] = {}
    for name, module, _pattern in matches:  # matches come in named_modules() order
        layout.setdefault(tuple(module.weight.shape), []).append((name, module))
    for shape in layout:  # refuse before any SVD runs
        out, fan_in = shape[0], math.prod(shape[1:])
        if config.rank > min(out, fan_in):
            raise ValueError(
                f"LoTR rank {config.rank} exceeds min(out, fan_in) = {min(out, fan_in)} of the weights of shape "
                f"{list(shape)} (viewed as {out} x {fan_in})"
            )

    groups = nn.ModuleDict()
    for shape, layers in layout.items():
        stacked = torch.stack([module.weight.detach().reshape(shape[0], -1) for _, module in layers])
        group = LoTRGroup(stacked, config.rank, [name for name, _ in layers], config.train_factors)
        groups[f"g{len(groups)}_{'x'.join(map(str, shape))}"] = group
        for name, module in layers:
            replace_module(root, name, LoTRLayer(module, group))
    root.add_module(GROUPS_ATTRIBUTE, groups)
