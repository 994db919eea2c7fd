"""tCURLoRA: tensor CUR decomposition in the t-product (Fourier) domain (He et al., MICCAI 2025, arXiv 2501.02227).

``n3`` same-shape pre-trained matrices are stacked as the frontal slices of ``W: [n3, n1, n2]`` and moved to
the Fourier domain along the stacking mode, ``What = rfft(W, dim=0)`` (slices ``0 .. n3 // 2``; the others
are their conjugates). Columns ``I`` and rows ``J`` are selected once from ``What`` (../shared/METHODS.md
section 3); per frequency ``k``: ``C_k = What[k][:, I]`` (``n1 x r``), ``R_k = What[k][J, :]`` (``r x n2``).
The published method fine-tunes the CUR core ``U_k``; we write the same function as

    ``W' = W + irfft(C_k dU_k R_k)``,  ``dU_k = U_k - U0_k`` complex, initialised to zero,

so the delta is exactly zero at init, ``U0`` is never stored, and ``irfft`` keeps it real (it drops the
imaginary parts that cannot survive, as the published ``.real`` does). ``C_k`` and ``R_k`` are real at
frequency 0 (and at ``n3 / 2`` when ``n3`` is even), where ``irfft`` ignores the imaginary part, so ``dU_k``
has no imaginary part there: the trainable tensors are the real parts ``tcur_dU_real: [F, r, r]`` and the
imaginary parts of the other frequencies ``tcur_dU_imag: [(n3 - 1) // 2, r, r]``, ``F = n3 // 2 + 1``.
Trainable real numbers per group: ``2 F r^2 - r^2`` for odd ``n3``, ``2 F r^2 - 2 r^2`` for even ``n3``
(``n3 r^2`` either way), every one of which receives a gradient. The deltas are built in float32 with
autocast off.

Unlike the public reference code, which writes the reconstruction into ``param.data`` once (so ``U``
never receives a gradient), the delta here is recomputed from ``dU`` in every forward pass, once per group:
the first member layer to run computes the whole group's delta and the others reuse it until the
forward pass of the injected module ends. Blocks that gradient checkpointing recomputes in the backward pass
rebuild the factors from ``dU`` instead, once per backward pass (:meth:`TCURGroup._once_per_pass` says why).

A fused attention ``qkv`` layer (weight ``[3 d, d]``) contributes its q, k and v squares as three members,
so on a ViT every block's q, k, v and output projection share one ``[4 * depth, d, d]`` tensor, as in the
paper. Conv2d weights are stacked viewed as ``[out, in * kh * kw]``.

Two forward forms compute the same function (tested against each other in float32 and under autocast):

* *dense form*: each member adds its slice of ``irfft(C dU R)`` to its weight and runs one linear/conv; the
  backward forms a dense ``[out, fan_in]`` weight gradient over every token. ``merge()`` and base layers whose
  ``forward`` is not linear in the weight (timm's ``StdConv2d``) use this form.
* *activation form*: writing out the inverse FFT, member ``m``'s delta is
  ``sum_k (c_k / n3) Re(exp(2 pi i k m / n3) C_k dU_k R_k)`` (``c_k`` from :func:`frequency_weights`), a product
  ``left_m @ right`` of real rank ``K = 2 F r``: ``right = [Re R_k; Im R_k]`` (``[K, n2]``, a function of the frozen
  weights, kept as a buffer) and ``left_m = [Re L_mk, -Im L_mk]`` with ``L_mk = (c_k / n3) exp(2 pi i k m / n3) C_k dU_k``
  (``[n1, K]``, rebuilt from ``dU`` once per forward pass of the injected module). The layer then runs
  ``base(x) + left (right x)`` like LoRA; a fused ``qkv`` computes ``right x`` once for its three members.

Each layer takes the activation form when it costs fewer multiply-adds per token
(:meth:`TCURLoRALayer.prefers_activation_form`): ``3 K (out + fan_in) < out * fan_in``, the low-rank pair's
forward and backward against the dense weight gradient. With ``K = 2 F r`` this favours layers in small groups
(a ViT's MLP layers: ``n3 = depth``) and low ranks; large groups at high rank keep the dense form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from medpeft.adapters.base import AdapterLayer, AdapterModule, full_precision, register_adapter, replace_module
from medpeft.adapters.recomputation import in_backward_pass, saved_outside_checkpoints

__all__ = [
    "TCURGroup",
    "TCURLoRAConfig",
    "TCURLoRALayer",
    "frequency_weights",
    "remove_tcurlora_groups",
    "select_cur_indices",
]

GROUPS_ATTRIBUTE = "tcurlora_groups"
HOOKS_ATTRIBUTE = "medpeft_tcurlora_hooks"


@dataclass
class TCURLoRAConfig:
    """Options of tCURLoRA.

    Args:
        rank: number of selected columns and rows ``r`` (the paper uses 1).
        grouping: ``"shape"``: every target with the same weight shape joins one stacked tensor (the
            paper's setup); ``"name"``: one tensor per target pattern (and per shape within a pattern).
        split_qkv: treat a fused ``*qkv`` linear of shape ``[3 d, d]`` as three ``[d, d]`` members.
    """

    rank: int = 1
    grouping: Literal["shape", "name"] = "shape"
    split_qkv: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"tCURLoRA rank must be a positive int, got {self.rank!r}")
        if self.grouping not in ("shape", "name"):
            raise ValueError(f"tCURLoRA grouping must be 'shape' or 'name', got {self.grouping!r}")


def frequency_weights(n3: int) -> torch.Tensor:
    """How many of the ``n3`` full-spectrum slices each ``rfft`` slice stands for: ``[n3 // 2 + 1]``.

    Slice 0 (and ``n3 / 2`` when ``n3`` is even) is its own mirror; every other one also stands for its
    conjugate.
    """
    weights = torch.full((n3 // 2 + 1,), 2.0)
    weights[0] = 1.0
    if n3 % 2 == 0:
        weights[-1] = 1.0
    return weights


def select_cur_indices(spectrum: torch.Tensor, n3: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the ``rank`` columns, then rows, of largest summed norm over all ``n3`` frequencies.

    Args:
        spectrum: ``What = rfft(W, dim=0)``, complex ``[n3 // 2 + 1, n1, n2]``.
        n3: the number of stacked slices (the mirrored frequencies are counted twice).
        rank: how many columns and rows to keep.

    Returns:
        ``(col_index [rank], row_index [rank])``, each sorted ascending.
    """
    weights = frequency_weights(n3).to(spectrum.real.dtype)
    col_scores = torch.einsum("f,fc->c", weights, torch.linalg.vector_norm(spectrum, dim=1))  # norms of columns
    col_index = torch.topk(col_scores, rank).indices.sort().values
    selected = spectrum[:, :, col_index]  # [F, n1, r]
    row_scores = torch.einsum("f,fj->j", weights, torch.linalg.vector_norm(selected, dim=2))  # norms of rows
    row_index = torch.topk(row_scores, rank).indices.sort().values
    return col_index, row_index


class TCURGroup(AdapterModule):
    """One stacked tensor of same-shape members and its trainable Fourier-domain CUR cores.

    Args:
        weights: the members' frozen weights stacked in model traversal order, ``[n3, n1, n2]``.
        rank: ``r``.
        members: ``(module name, slice index within that module)`` for each of the ``n3`` slices.
    """

    def __init__(self, weights: torch.Tensor, rank: int, members: list[tuple[str, int]]) -> None:
        super().__init__()
        n3, n1, n2 = weights.shape
        if rank > min(n1, n2):
            raise ValueError(f"tCURLoRA rank {rank} exceeds the member shape {n1} x {n2}")
        self.n3, self.n1, self.n2, self.rank = n3, n1, n2, rank
        self.members = list(members)
        spectrum = torch.fft.rfft(weights.detach().float(), dim=0)  # [F, n1, n2] complex, F = n3 // 2 + 1
        col_index, row_index = select_cur_indices(spectrum, n3, rank)
        self.register_buffer("col_index", col_index)
        self.register_buffer("row_index", row_index)
        # C and R are functions of the frozen base weights and the indices: built here, rebuilt after a state dict
        # is loaded (see refresh_factors), never saved.
        self.register_buffer("cur_C", spectrum[:, :, col_index].contiguous(), persistent=False)  # [F, n1, r]
        self.register_buffer("cur_R", spectrum[:, row_index, :].contiguous(), persistent=False)  # [F, r, n2]
        # The activation form's right factor [Re R_k; Im R_k] over (k, row) -> [2 F r, n2], and the phases
        # (c_k / n3) exp(2 pi i k m / n3) of the inverse FFT: [n3, F]
        self.register_buffer("right_factor", self._right_factor(self.cur_R), persistent=False)
        k = torch.arange(spectrum.shape[0], dtype=torch.float64)
        m = torch.arange(n3, dtype=torch.float64)[:, None]
        phases = torch.polar(frequency_weights(n3).double() / n3, 2 * torch.pi * k * m / n3)
        self.register_buffer("irfft_phases", phases.to(torch.complex64).to(weights.device), persistent=False)
        # dU as real tensors (optimisers and safetensors handle those): real parts [F, r, r] and imaginary
        # parts [(n3 - 1) // 2, r, r] of frequencies 1 .. (n3 - 1) // 2 only (see the module docstring).
        frequencies, imaginary = spectrum.shape[0], (n3 - 1) // 2
        self.tcur_dU_real = nn.Parameter(torch.zeros(frequencies, rank, rank, device=weights.device))
        self.tcur_dU_imag = (
            nn.Parameter(torch.zeros(imaginary, rank, rank, device=weights.device)) if imaginary > 0 else None
        )
        self._per_pass: dict[str, tuple[torch.Tensor, ...]] = {}  # member deltas / left factors of this forward pass
        self.caching = False
        self._recomputed: dict[str, torch.Tensor] = {}  # the same unsplit, rebuilt for blocks recomputed in backward

    @staticmethod
    def _right_factor(cur_R: torch.Tensor) -> torch.Tensor:
        """``[Re R; Im R]`` of ``R: [F, r, n2]`` complex, rows ordered (frequency, row): ``[2 F r, n2]`` float32."""
        flat = cur_R.reshape(-1, cur_R.shape[-1])
        return torch.cat([flat.real, flat.imag]).contiguous()

    @property
    def activation_rank(self) -> int:
        """``K = 2 F r``: the real rank of a member's delta as the activation form writes it."""
        return self.right_factor.shape[0]

    def refresh_factors(self, weights: torch.Tensor) -> None:
        """Rebuild ``C`` and ``R`` from the members' frozen weights ``[n3, n1, n2]`` at the stored indices.

        Needed after loading a checkpoint into a network whose frozen weights at injection were not the trained
        run's (a random-init encoder, ``model.pretrained: false``): ``C`` and ``R`` would otherwise stay those of
        the weights the group was built from.
        """
        with torch.no_grad():
            spectrum = torch.fft.rfft(weights.detach().float(), dim=0)
            self.cur_C.copy_(spectrum[:, :, self.col_index])
            self.cur_R.copy_(spectrum[:, self.row_index, :])
            self.right_factor.copy_(self._right_factor(self.cur_R))

    def complex_dU(self) -> torch.Tensor:
        """``dU`` as complex ``[F, r, r]``, imaginary parts zero at frequency 0 (and ``n3 / 2`` for even ``n3``)."""
        real = self.tcur_dU_real
        if self.tcur_dU_imag is None:
            return torch.complex(real, torch.zeros_like(real))
        zeros = real.new_zeros(1, *real.shape[1:])  # [1, r, r]
        nyquist = [zeros] if self.n3 % 2 == 0 else []
        imag = torch.cat([zeros, self.tcur_dU_imag, *nyquist])  # frequency 0, 1 .. (n3 - 1) // 2, n3 / 2 -> [F, r, r]
        return torch.complex(real, imag)

    def compute_delta(self) -> torch.Tensor:
        """The group's real delta ``irfft(C dU R)``: ``[n3, n1, n2]`` float32, whatever the autocast state."""
        with full_precision(self.tcur_dU_real.device):
            core = (self.cur_C @ self.complex_dU()) @ self.cur_R  # [F, n1, r] @ [F, r, r] @ [F, r, n2] -> [F, n1, n2]
            return torch.fft.irfft(core, n=self.n3, dim=0)

    def member_deltas(self) -> tuple[torch.Tensor, ...]:
        """The group delta split into its ``n3`` member slices ``[n1, n2]``.

        Computed once per forward pass of the injected module while it runs (see :meth:`start_forward_pass`).
        Splitting once with ``unbind`` matters for speed: indexing the ``[n3, n1, n2]`` delta in every member
        would make each member's backward write a zero-filled gradient of the whole group.
        """
        return self._once_per_pass("delta", self.compute_delta)

    def compute_left_factors(self) -> torch.Tensor:
        """Every member's left factor ``left_m = [Re L_m, -Im L_m]``: ``[n3, n1, 2 F r]`` float32 (module docstring)."""
        with full_precision(self.tcur_dU_real.device):
            c_du = self.cur_C @ self.complex_dU()  # [F, n1, r]
            left = torch.einsum("mk,kar->makr", self.irfft_phases, c_du).reshape(self.n3, self.n1, -1)  # [n3, n1, F r]
            return torch.cat([left.real, -left.imag], dim=-1)

    def member_left_factors(self) -> tuple[torch.Tensor, ...]:
        """:meth:`compute_left_factors` split per member, computed once per forward pass like :meth:`member_deltas`."""
        return self._once_per_pass("left", self.compute_left_factors)

    def _once_per_pass(self, key: str, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``compute()`` split along the members, kept for the rest of the forward pass while one runs.

        Under gradient checkpointing (:mod:`medpeft.models.checkpointing`) a block's forward runs again in the
        backward pass, after the pass that cached the factors has ended (or, were a backward run inside another
        forward, with that pass's factors cached). A recomputation therefore never reads the forward pass's cache: the
        first recomputed member rebuilds the factors from ``dU`` (which cannot change between a forward and its
        backward, so they are the ones the first run used) and the others reuse them until the next forward pass
        starts. The building is kept out of the checkpoint's books (:func:`saved_outside_checkpoints`): the first run of
        a block may have found the factors cached where its recomputation builds them, and the checkpoint expects
        both runs to save the same tensors. The gradient reaches ``dU`` through the first run's graph; a
        recomputation only restores the values a block's backward reads, so the rebuilt factors are kept without a
        graph (which would also outlive the backward pass) but with the same ``requires_grad``, on which what a block
        saves depends.
        """
        with saved_outside_checkpoints():
            if in_backward_pass():
                if key not in self._recomputed:
                    factors = compute()
                    self._recomputed[key] = factors.detach().requires_grad_(factors.requires_grad)
                return self._recomputed[key].unbind(0)
            if not self.caching:
                return compute().unbind(0)
            if key not in self._per_pass:
                self._per_pass[key] = compute().unbind(0)
            return self._per_pass[key]

    def start_forward_pass(self) -> None:
        self._per_pass, self.caching = {}, True
        self._recomputed = {}  # the last backward pass is over: free its factors

    def end_forward_pass(self) -> None:
        self._per_pass, self.caching = {}, False


class TCURLoRALayer(AdapterLayer):
    """A member layer of a :class:`TCURGroup`; its delta is its slices of the group delta.

    Args:
        base_layer: the frozen layer.
        group: the group holding this layer's slices (not registered as a submodule here: it lives in the
            injected root module's ``tcurlora_groups`` so its parameters are counted and saved once).
        slices: indices of this layer's slices in the group, in output-row order (three for a split qkv).
    """

    def __init__(self, base_layer: nn.Module, group: TCURGroup, slices: list[int]) -> None:
        super().__init__(base_layer)
        self.__dict__["group"] = group  # plain attribute: see Args
        self.slices = list(slices)

    def compute_delta_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        slices = self.group.member_deltas()
        delta = torch.cat([slices[i] for i in self.slices])  # rows stacked: q, k, v squares -> [3 d, d]
        return delta.reshape(weight.shape).to(weight.dtype)

    def prefers_activation_form(self, x: torch.Tensor | None = None) -> bool:
        """The documented rule: the activation form when ``3 K (out + fan_in) < out * fan_in`` (module docstring).

        ``x`` is accepted for the same call as TRM's rule and not used: this rule does not depend on the batch.
        """
        if not self.activation_form_allowed:
            return False
        out, fan_in = self.out_features, self.fan_in
        return 3 * self.group.activation_rank * (out + fan_in) < out * fan_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.prefers_activation_form(x):
            return super().forward(x)
        lefts = self.group.member_left_factors()
        left = torch.cat([lefts[i] for i in self.slices])  # [out, 2 F r]; q, k, v share right @ x
        return self.base_layer(x) + self.low_rank_forward(x, self.group.right_factor.to(x.dtype), left.to(x.dtype))


def _member_shape(module: nn.Module, split_qkv: bool, name: str) -> tuple[int, tuple[int, int]]:
    """How many square members a layer contributes and their ``(n1, n2)`` shape."""
    weight = module.weight
    rows, cols = weight.shape[0], weight[0].numel()
    if split_qkv and isinstance(module, nn.Linear) and name.endswith("qkv") and rows == 3 * cols:
        return 3, (cols, cols)
    return 1, (rows, cols)


def remove_tcurlora_groups(root: nn.Module) -> None:
    """Drop the groups and their forward hooks from ``root`` (after the members were unloaded)."""
    for handle in root.__dict__.pop(HOOKS_ATTRIBUTE, []):
        handle.remove()
    if hasattr(root, GROUPS_ATTRIBUTE):
        delattr(root, GROUPS_ATTRIBUTE)


@register_adapter(
    "tcurlora",
    TCURLoRAConfig,
    size_knob="rank",
    encoder_lr_scale=100.0,
    cleanup=remove_tcurlora_groups,
    summary="tensor CUR in the t-product domain, cores U train (He et al. 2025)",
)
def apply_tcurlora(root: nn.Module, matches: list[tuple[str, nn.Module, str]], config: TCURLoRAConfig) -> None:
    """Stack the matched layers into groups, build each group's CUR cores, and wrap every member layer.

    Groups are registered in ``root.tcurlora_groups`` (an ``nn.ModuleDict``) and ``root`` gets forward hooks
    that let each group compute its delta once per forward pass.
    """
    layout: dict[tuple, list[tuple[str, nn.Module, int]]] = {}
    for name, module, pattern in matches:  # matches come in named_modules() order
        count, shape = _member_shape(module, config.split_qkv, name)
        key = (shape,) if config.grouping == "shape" else (pattern, shape)
        layout.setdefault(key, []).append((name, module, count))

    groups = nn.ModuleDict()
    for key, layers in layout.items():
        n1, n2 = key[-1]
        stacked = torch.cat([module.weight.detach().reshape(count, n1, n2) for _, module, count in layers])
        members = [(name, j) for name, _, count in layers for j in range(count)]
        group = TCURGroup(stacked, config.rank, members)
        group_name = f"g{len(groups)}_{n1}x{n2}"
        groups[group_name] = group
        start = 0
        for name, module, count in layers:
            replace_module(root, name, TCURLoRALayer(module, group, list(range(start, start + count))))
            start += count
    root.add_module(GROUPS_ATTRIBUTE, groups)

    # always_call: the cache is dropped even when the forward raises, so a later merge() never sees a stale delta
    handles = [
        root.register_forward_pre_hook(_start_forward_pass),
        root.register_forward_hook(_end_forward_pass, always_call=True),
        root.register_load_state_dict_post_hook(_refresh_after_load),
    ]
    root.__dict__[HOOKS_ATTRIBUTE] = handles


# Hooks look the groups up on the module they are called with, so they stay right on a deep copy.
def _refresh_after_load(root: nn.Module, _incompatible_keys: object) -> None:
    """After ``root.load_state_dict``: rebuild every group's ``C`` and ``R`` from the loaded frozen weights."""
    for group in getattr(root, GROUPS_ATTRIBUTE).values():
        names = list(dict.fromkeys(name for name, _ in group.members))  # member layers, in slice order
        layers = [root.get_submodule(name) for name in names]
        if any(layer.merged for layer in layers):
            raise RuntimeError("load the state dict into an unmerged tCURLoRA model (call unmerge() first)")
        group.refresh_factors(torch.cat([layer.base_layer.weight.reshape(-1, group.n1, group.n2) for layer in layers]))


def _start_forward_pass(root: nn.Module, _args: tuple) -> None:
    for group in getattr(root, GROUPS_ATTRIBUTE).values():
        group.start_forward_pass()


def _end_forward_pass(root: nn.Module, _args: tuple, _output: object) -> None:
    for group in getattr(root, GROUPS_ATTRIBUTE).values():
        group.end_forward_pass()
