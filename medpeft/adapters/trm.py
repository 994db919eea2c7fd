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

Two forward forms compute the same function (tested against each other in float32 and under autocast); each
forward takes the one with fewer estimated multiply-adds for the input at hand
(:meth:`TRMLayer.prefers_activation_form`). Both start from ``T - I``, built from the cores at the cost of about one
dense ``[in, in]`` ring contraction (:func:`ring_matrix_minus_identity`).

* *weight form*: build the effective weight ``W0 + W0 (T - I) + Delta`` and run one linear/conv. Costs
  ``out * fan_in * in`` for ``W0 (T - I)`` (twice, with its backward) whatever the batch, plus a dense
  ``[out, fan_in]`` weight gradient over every token. Also what ``merge()`` uses, and the only form for base layers
  whose ``forward`` is not linear in the weight (timm's ``StdConv2d``).
* *activation form*: ``base(x + (T - I) x) + Delta x``: ``(T - I)`` applied to the tokens (a 1x1 channel mix for a
  convolution; ``3 * tokens * in^2`` with its backward), ``Delta x`` through the residual's two chains as a
  rank-``R^2`` pair of layers (``fan_in -> R^2 -> out``) like LoRA. No dense weight and no weight gradient are
  formed. Cheaper when a layer has more outputs than inputs (ViT ``qkv`` and ``fc1``) or few tokens.

Like LoRA's low-rank path, the activation form runs its products in the autocast dtype; ``T - I`` itself is built in
float32 either way, and both forms are exactly the plain layer at init.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
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


def _open_chain(lower: torch.Tensor, higher: torch.Tensor) -> torch.Tensor:
    """Ring chain of two TRM blocks, left open: ``[a, b, R, R] x [i, k, R, R] -> [i * a, k * b, R, R]``.

    ``higher`` holds the more significant digits (little-endian multi-indices).
    """
    chain = torch.einsum("abrs,ikst->iakbrt", lower, higher)
    return chain.reshape(higher.shape[0] * lower.shape[0], higher.shape[1] * lower.shape[1], *chain.shape[4:])


def ring_matrix_minus_identity(
    cores: list[torch.Tensor] | nn.ParameterList, identity: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """``T - I`` for the TRM ``T = ring_matrix(cores)``, in float32, exactly zero when the cores are at init.

    With ``E_d`` the init cores (``eye(I_d) / R`` in every ring slot, ``ring_matrix(E) = I``), ``T - I`` telescopes into
    ``sum_d ring(E_1, ..., E_{d-1}, A_d - E_d, S_{d+1})`` with the suffix chains ``S_{d+1} = A_{d+1} ... A_D``. Each
    term has a factor ``A_d - E_d`` that is exactly zero at init (computed in the cores' own dtype), whereas ``T - I``
    computed densely leaves round-off when ``1 / R`` is inexact (R = 3) and cancels the small update against ``I``.

    A chain of init cores is ``eye / R`` in every ring slot again, so for ``d >= 2`` the term is
    ``kron(Q_d, eye(I_1 ... I_{d-1})) / R`` with ``Q_d`` the sum over both open ring indices of
    ``(A_d - E_d) S_{d+1}`` (a matrix over the digits ``d .. D`` only); the first term is the ring trace of
    ``(A_1 - E_1) S_2``. So the cost is one ``[in, in]`` ring contraction (plus small ones), not ``D``.

    Args:
        cores: ``A_d`` of shape ``[I_d, I_d, R, R]``.
        identity: the init cores ``E_d`` in the cores' dtype, when the caller keeps them (built here otherwise).

    Returns:
        ``[prod I_d, prod I_d]`` float32.
    """
    if identity is None:
        identity = [identity_core(core.shape[0], core.shape[2], core.dtype, core.device) for core in cores]
    updates = [(core - e).float() for core, e in zip(cores, identity)]  # A_d - E_d, exactly zero at init
    if len(cores) == 1:
        return torch.einsum("abrr->ab", updates[0])
    rank = cores[0].shape[2]
    # The kron(Q_d, eye(L)) terms touch only the diagonal blocks: collect the Q_d first, add them in place at the end
    # (dense [in, in] passes cost memory bandwidth, the dominant cost for wide layers).
    highs = [updates[-1].sum(dim=(2, 3))]  # d = D: Q_D is A_D - E_D summed over its ring slots
    suffix = cores[-1].float()  # S_{d+1}, grown from the most significant core down
    for d in range(len(cores) - 2, 0, -1):
        summed = torch.einsum("abrs,ikst->iakb", updates[d], suffix)  # summed over the open ring ends r, t
        highs.append(summed.reshape(summed.shape[0] * summed.shape[1], -1))
        suffix = _open_chain(cores[d].float(), suffix)
    # d = 1: the ring trace of (A_1 - E_1) S_2, without building the [in, in, R, R] chain
    closed = torch.einsum("abrs,iksr->iakb", updates[0], suffix)
    total = closed.reshape(closed.shape[0] * closed.shape[1], -1)
    for high in highs:
        low = total.shape[0] // high.shape[0]  # I_1 ... I_{d-1}
        blocks = total.view(high.shape[0], low, high.shape[0], low).diagonal(dim1=1, dim2=3)  # [H, H, low]
        blocks.add_(high[:, :, None] / rank)
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
        # The init cores E_d of T - I: constants, kept instead of rebuilt every step (not saved: derived from R)
        for d, size in enumerate(self.in_factors):
            self.register_buffer(f"identity_core_{d}", identity_core(size, R, dtype, device).clone(), persistent=False)
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
        up, down = self.residual_factors()
        with full_precision(weight.device):
            return up @ down  # trace(B-chain @ C-chain)

    def identity_cores(self) -> list[torch.Tensor]:
        """The init transform cores ``E_d``: ``[I_d, I_d, R, R]`` each."""
        return [getattr(self, f"identity_core_{d}") for d in range(len(self.in_factors))]

    def residual_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``Delta = up @ down`` with ``up: [out, R^2]`` and ``down: [R^2, fan_in]`` (the two open chains), float32."""
        with full_precision(self.base_layer.weight.device):
            out_chain = ring_vector_product([core.float() for core in self.residual_out_cores])  # [out, R, R] (r, s)
            in_chain = ring_vector_product([core.float() for core in self.residual_in_cores])  # [fan_in, R, R] (s, r)
        rank = self.config.rank
        return out_chain.reshape(-1, rank * rank), in_chain.permute(2, 1, 0).reshape(rank * rank, -1)

    def prefers_activation_form(self, x: torch.Tensor) -> bool:
        """The documented rule: the activation form when its estimated multiply-adds for this input are fewer.

        With ``N`` input positions (tokens, or ``B * H * W`` for a convolution) and ``N'`` output positions:

        * weight form: ``2 * out * fan_in * in`` (``W0 (T - I)`` and its backward) ``+ N' * out * fan_in`` (the dense
          weight gradient) ``+ 2 * R^2 * out * fan_in`` (``Delta`` and its backward);
        * activation form: ``3 * N * in^2`` (``(T - I) x``, its input and its ``T`` gradient)
          ``+ 3 * N' * R^2 * (fan_in + out)`` (the residual pair of layers).

        The frozen layer's own forward and input gradient, and building ``T - I``, cost the same in both.
        """
        if not self.activation_form_allowed:
            return False
        positions = x.numel() // self.in_features
        out_positions = positions
        if self.is_conv:
            stride = self.base_layer.stride
            out_positions = max(1, positions // (stride[0] * stride[1]))
        R, out, fan_in, n_in = self.config.rank, self.out_features, self.fan_in, self.in_features
        weight_form = 2 * out * fan_in * n_in + out_positions * out * fan_in
        activation_form = 3 * positions * n_in * n_in
        if self.config.residual:
            weight_form += 2 * R * R * out * fan_in
            activation_form += 3 * out_positions * R * R * (fan_in + out)
        return activation_form < weight_form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.prefers_activation_form(x):
            return super().forward(x)
        with full_precision(x.device):
            t_minus_identity = ring_matrix_minus_identity(self.transform_cores, self.identity_cores())  # [in, in]
        mix = t_minus_identity.to(x.dtype)
        change = F.conv2d(x, mix[:, :, None, None]) if self.is_conv else F.linear(x, mix)  # (T - I) x
        out = self.base_layer(x + change.to(x.dtype))
        if self.config.residual:
            up, down = self.residual_factors()
            out = out + self.low_rank_forward(x, down.to(x.dtype), up.to(x.dtype))
        return out

    def compute_delta_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        with full_precision(weight.device):
            t_minus_identity = ring_matrix_minus_identity(self.transform_cores, self.identity_cores())  # [in, in] f32
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


@register_adapter("trm", TRMConfig, size_knob="rank", summary="TLoRA transform + tensor-ring residual")
def apply_trm(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: TRMConfig) -> None:
    """Replace every matched layer of ``root`` by a :class:`TRMLayer`."""
    for name, module, _pattern in matches:
        replace_module(root, name, TRMLayer(module, config))
