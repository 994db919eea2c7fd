"""TRM / TLoRA: a tensor-ring transform of the input plus a tensor-ring residual (Tao et al., arXiv 2501.08727).

``y = (W0 T + Delta) x + b`` where ``T: [in, in]`` is a full-rank transform stored as a tensor-ring matrix
(TRM) and ``Delta: [out, in]`` a tensor-ring (TR) residual. The maths, index conventions and init follow
../shared/METHODS.md section 2:

* ``in = I_1 * ... * I_D`` and ``out = J_1 * ... * J_D`` with balanced factors; multi-indices are
  little-endian, ``i = i_1 + i_2 * I_1 + ...`` (0-based).
* ``T[i, j] = trace(A_1[i_1, j_1] @ ... @ A_D[i_D, j_D])`` with cores ``A_d: [I_d, I_d, R, R]``
  initialised to ``eye(I_d) / R`` in every ``(r, s)`` slot, which gives ``T = I``.
* ``Delta[o, i] = trace(B_1[o_1] ... B_D[o_D] C_1[i_1] ... C_D[i_D])``, ``B_d: [J_d, R, R]``,
  ``C_d: [I_d, R, R]``; ``B_1 = 0`` and the rest ``N(0, sigma^2)``, ``sigma = sqrt(R) / (mode * R)``.
* Trainable numbers: ``R^2 * sum_d I_d^2`` (transform) ``+ R^2 * (sum_d J_d + sum_d I_d)`` (residual).

The delta ``W0 (T - I) + Delta`` is built in float32 with autocast off, and ``T - I`` is computed on the
cores (:func:`ring_matrix_minus_identity`), never as the difference of two O(1) dense matrices: it is
exactly zero at init for every ring rank and does not lose the small update to cancellation.

For ``nn.Conv2d`` the transform mixes input channels only (a 1x1 channel mix before the convolution) and
the residual is a TR over the weight viewed as ``[out, in * kh * kw]``.

Efficiency: the forward builds the effective weight ``W0 T + Delta`` once and runs one linear/conv. ``T`` is
``in x in``, so this costs ``out * in^2`` per forward whatever the batch size, and beats applying ``T`` to
every token once a batch holds more than ``out`` tokens (any ViT batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from medpeft.adapters.base import AdapterLayer, full_precision, register_adapter, replace_module

__all__ = [
    "TRMConfig",
    "TRMLayer",
    "balanced_factors",
    "identity_core",
    "identity_regularizer",
    "orthogonal_regularizer",
    "ring_matrix",
    "ring_matrix_minus_identity",
    "ring_vector_product",
]


@dataclass
class TRMConfig:
    """Options of TRM.

    Args:
        rank: ring rank ``R``.
        order: number of factors ``D`` of each dimension. ``D = 3`` is what makes the transform compact
            (``D = 2`` on a 768 x 768 layer costs ``1600 R^2`` numbers, more than LoRA), so it is the default.
        residual: add the tensor-ring residual ``Delta`` (the paper's full method); ``False`` keeps only ``T``.
        regularizer: ``"identity"`` (the paper's better choice, default), ``"orthogonal"`` or ``None``.
    """

    rank: int = 2
    order: int = 3
    residual: bool = True
    regularizer: Literal["identity", "orthogonal"] | None = "identity"

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"TRM rank must be a positive int, got {self.rank!r}")
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"TRM order must be an int >= 1, got {self.order!r}")
        if self.regularizer not in ("identity", "orthogonal", None):
            raise ValueError(f"TRM regularizer must be 'identity', 'orthogonal' or None, got {self.regularizer!r}")


def balanced_factors(n: int, order: int) -> tuple[int, ...]:
    """Split ``n`` into ``order`` factors (ascending) minimising the sum of their squares.

    Minimising ``sum I_d^2`` minimises the transform's parameter count ``R^2 sum I_d^2``; factors of 1 are
    allowed, so a prime ``n`` gives ``(1, ..., 1, n)``.

    >>> balanced_factors(768, 3)
    (8, 8, 12)
    """

    def splits(m: int, parts: int, smallest: int) -> list[tuple[int, ...]]:
        if parts == 1:
            return [(m,)] if m >= smallest else []
        out = []
        f = smallest
        while f**parts <= m:  # factors ascend, so the smallest one is at most m^(1/parts)
            if m % f == 0:
                out += [(f, *rest) for rest in splits(m // f, parts - 1, f)]
            f += 1
        return out

    candidates = splits(n, order, 1)
    return min(candidates, key=lambda fs: (sum(f * f for f in fs), fs))


def ring_matrix(cores: list[torch.Tensor] | nn.ParameterList) -> torch.Tensor:
    """Dense TRM ``M[i, j] = trace(A_1[i_1, j_1] ... A_D[i_D, j_D])`` with little-endian multi-indices.

    Args:
        cores: ``A_d`` of shape ``[I_d, K_d, R, R]``.

    Returns:
        ``[prod I_d, prod K_d]``.
    """
    chain = cores[0]  # [a, b, R, R]: rows/cols so far, big-endian (i_d, ..., i_1)
    for core in cores[1:-1]:
        I, K = core.shape[:2]
        # (a, b, r, s) x (I, K, s, t) -> (I, a, K, b, r, t): the new index is the most significant one
        chain = torch.einsum("abrs,ikst->iakbrt", chain, core)
        chain = chain.reshape(I * chain.shape[1], K * chain.shape[3], *chain.shape[4:])
    if len(cores) == 1:
        return torch.einsum("abrr->ab", chain)
    last = cores[-1]
    # Close the ring on the last contraction so the [in, in, R, R] tensor is never built.
    dense = torch.einsum("abrs,iksr->iakb", chain, last)
    return dense.reshape(last.shape[0] * chain.shape[0], last.shape[1] * chain.shape[1])


def identity_core(size: int, rank: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The init transform core ``eye(size) / R`` in every ``(r, s)`` slot: ``[size, size, R, R]``."""
    return (torch.eye(size, dtype=dtype, device=device) / rank)[:, :, None, None].expand(size, size, rank, rank)


def ring_matrix_minus_identity(cores: list[torch.Tensor] | nn.ParameterList) -> torch.Tensor:
    """``T - I`` for the TRM ``T = ring_matrix(cores)``, in float32, exactly zero when the cores are at init.

    With ``E_d`` the init cores (``ring_matrix(E) = I`` up to the rounding of ``1 / R``), ``T - I`` telescopes into
    ``sum_d ring_matrix(E_1, ..., E_{d-1}, A_d - E_d, A_{d+1}, ..., A_D)``. Each term has a factor
    ``A_d - E_d`` that is exactly zero at init (computed in the cores' own dtype), whereas ``T - I`` computed
    densely leaves round-off when ``1 / R`` is inexact (R = 3) and cancels the small update against ``I``.
    Costs ``D`` ring contractions, small next to the ``W0 (T - I)`` product.

    Args:
        cores: ``A_d`` of shape ``[I_d, I_d, R, R]``.

    Returns:
        ``[prod I_d, prod I_d]`` float32.
    """
    identity = [identity_core(core.shape[0], core.shape[2], core.dtype, core.device) for core in cores]
    full = [core.float() for core in cores]
    total = 0
    for d, core in enumerate(cores):
        # E_1 .. E_{d-1}, A_d - E_d, A_{d+1} .. A_D
        chain = [e.float() for e in identity[:d]] + [(core - identity[d]).float()] + full[d + 1 :]
        total = total + ring_matrix(chain)
    return total


def ring_vector_product(cores: list[torch.Tensor] | nn.ParameterList) -> torch.Tensor:
    """Chain ``P[n] = G_1[n_1] @ ... @ G_D[n_D]`` of tensor-ring vector cores, little-endian ``n``.

    Args:
        cores: ``G_d`` of shape ``[N_d, R, R]``.

    Returns:
        ``[prod N_d, R, R]`` (the ring is left open).
    """
    chain = cores[0]
    for core in cores[1:]:
        n = core.shape[0]
        chain = torch.einsum("ars,nst->nart", chain, core)  # (a, r, s) x (n, s, t) -> (n, a, r, t)
        chain = chain.reshape(n * chain.shape[1], *chain.shape[2:])
    return chain


def identity_regularizer(cores: list[torch.Tensor] | nn.ParameterList) -> torch.Tensor:
    """``sum_d sum_{r,s} || A_d[:, :, r, s] - eye(I_d) / R ||_F``, zero at the identity init."""
    total = cores[0].new_zeros(())
    for core in cores:
        target = identity_core(core.shape[0], core.shape[2], core.dtype, core.device)
        total = total + torch.linalg.matrix_norm((core - target).permute(2, 3, 0, 1)).sum()
    return total


def orthogonal_regularizer(cores: list[torch.Tensor] | nn.ParameterList) -> torch.Tensor:
    """Penalty on ``T T^T - I`` computed on the cores, never on the dense ``T``.

    ``T T^T`` is a TRM of ring rank ``R^2`` with cores ``G_d[i, j] = sum_l kron(A_d[i, l], A_d[j, l])``;
    the penalty is ``sum_d sum_{i,j} || G_d[i, j] - [i == j] ones(R^2, R^2) / R^2 ||_F`` (zero when the cores
    are at their identity init).
    """
    total = cores[0].new_zeros(())
    for core in cores:
        size, rank = core.shape[0], core.shape[2]
        # kron(X, Y)[(a, c), (b, d)] = X[a, b] Y[c, d]
        gram = torch.einsum("ilab,jlcd->ijacbd", core, core).reshape(size, size, rank * rank, rank * rank)
        target = torch.eye(size, dtype=core.dtype, device=core.device)[:, :, None, None] / rank**2
        total = total + torch.linalg.matrix_norm(gram - target).sum()
    return total


class TRMLayer(AdapterLayer):
    """TRM transform (+ optional TR residual) around an ``nn.Linear`` or ``nn.Conv2d``.

    Args:
        base_layer: the frozen layer.
        config: ring rank, order, residual, regulariser.
    """

    def __init__(self, base_layer: nn.Module, config: TRMConfig) -> None:
        super().__init__(base_layer)
        self.config = config
        R = config.rank
        device, dtype = self.base_layer.weight.device, self.base_layer.weight.dtype
        self.in_factors = balanced_factors(self.in_features, config.order)
        self.transform_cores = nn.ParameterList(
            [nn.Parameter(identity_core(size, R, dtype, device).clone()) for size in self.in_factors]
        )
        self.out_factors: tuple[int, ...] = ()
        self.fan_in_factors: tuple[int, ...] = ()
        self.residual_out_cores = nn.ParameterList()
        self.residual_in_cores = nn.ParameterList()
        if config.residual:
            self.out_factors = balanced_factors(self.out_features, config.order)
            self.fan_in_factors = balanced_factors(self.fan_in, config.order)
            for d, size in enumerate(self.out_factors):
                core = torch.zeros(size, R, R, device=device, dtype=dtype)
                if d > 0:  # B_1 = 0 makes Delta = 0; the others get muP-style N(0, (sqrt(R) / (size R))^2)
                    core.normal_(0.0, math.sqrt(R) / (size * R))
                self.residual_out_cores.append(nn.Parameter(core))
            for size in self.fan_in_factors:
                core = torch.randn(size, R, R, device=device, dtype=dtype) * (math.sqrt(R) / (size * R))
                self.residual_in_cores.append(nn.Parameter(core))

    def transform_matrix(self) -> torch.Tensor:
        """Dense transform ``T``: ``[in, in]`` (``in`` = input channels for Conv2d), float32."""
        with full_precision(self.base_layer.weight.device):
            return ring_matrix([core.float() for core in self.transform_cores])

    def residual_matrix(self) -> torch.Tensor:
        """Dense residual ``Delta``: ``[out, fan_in]``, float32 (zeros when ``residual=False``)."""
        weight = self.base_layer.weight
        if not self.config.residual:
            return weight.new_zeros(self.out_features, self.fan_in, dtype=torch.float32)
        with full_precision(weight.device):
            out_chain = ring_vector_product([core.float() for core in self.residual_out_cores])  # [out, R, R]
            in_chain = ring_vector_product([core.float() for core in self.residual_in_cores])  # [fan_in, R, R]
            return torch.einsum("ors,isr->oi", out_chain, in_chain)  # trace(B-chain @ C-chain)

    def compute_delta_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        with full_precision(weight.device):
            t_minus_identity = ring_matrix_minus_identity(self.transform_cores)  # [in, in] float32
            if self.is_conv:
                # W0 (T - I): [out, in, kh, kw] x [in, in'] -> [out, in', kh, kw] (T mixes input channels only)
                transformed = torch.einsum("oihw,ij->ojhw", weight.float(), t_minus_identity)
            else:
                transformed = weight.float() @ t_minus_identity  # [out, in] @ [in, in]
            delta = transformed + self.residual_matrix().reshape(weight.shape)
        return delta.to(weight.dtype)

    def regularization(self) -> torch.Tensor | None:
        if self.config.regularizer == "identity":
            return identity_regularizer(self.transform_cores)
        if self.config.regularizer == "orthogonal":
            return orthogonal_regularizer(self.transform_cores)
        return None


@register_adapter("trm", TRMConfig)
def apply_trm(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: TRMConfig) -> None:
    """Replace every matched layer of ``root`` by a :class:`TRMLayer`."""
    for name, module, _pattern in matches:
        replace_module(root, name, TRMLayer(module, config))
