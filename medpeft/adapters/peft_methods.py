"""Hugging Face ``peft``'s methods through medpeft's paths: LoRA, DoRA, LoHa, LoKr, OFT, BOFT, HRA, IA3, VeRA, AdaLoRA.

Each is injected with peft's own tuner class (``peft.tuners.<X>Model(root, config, "default")``, which replaces the
matched layers in place) into exactly the layers medpeft's ``targets`` / ``blocks`` selected: their qualified names
become peft's ``target_modules``. Everything after that is medpeft's: freezing (only the tensors peft left
trainable train), parameter counting, the adapter file (every peft layer's tensors outside its ``base_layer``, VeRA's
shared projections included), the task file, merging with peft's own ``merge()`` / ``unmerge()``, evaluation, sweeps
and budgets.

One option, ``adapter.rank``, is each method's size knob (what ``adapter.budget`` chooses):

=============  ======================================================================================================
method         peft's knob set by ``rank``
=============  ======================================================================================================
``peft_lora``  ``LoraConfig(r=rank)``: peft's LoRA, the same function as medpeft's ``lora`` (the oracle of its tests)
``dora``       ``LoraConfig(r=rank, use_dora=True)``: LoRA's direction plus a learned magnitude per output (Liu 2024)
``loha``       ``LoHaConfig(r=rank)``: Hadamard product of two low-rank products (Hyeon-Woo 2022)
``lokr``       ``LoKrConfig(r=rank)``: Kronecker product with a low-rank factor (Yeh 2024)
``oft``        ``OFTConfig(r=0, oft_block_size=rank)``: block-diagonal orthogonal rotation of the weight (Qiu 2023)
``boft``       ``BOFTConfig(boft_block_size=rank)``: butterfly-factorised orthogonal rotation (Liu 2024)
``hra``        ``HRAConfig(r=rank)``: a chain of ``rank`` Householder reflections (Yuan 2024)
``vera``       ``VeraConfig(r=rank)``: frozen shared random projections, trained scaling vectors (Kopiczko 2024)
``adalora``    ``AdaLoraConfig(init_r=rank, target_r=round(2 rank / 3))``: SVD-form LoRA whose ranks the allocator prunes
               during training (Zhang 2023); the allocator is stepped after every optimizer step
``ia3``        no knob: learned per-channel scaling of the layer outputs (Liu 2022)
=============  ======================================================================================================

``alpha`` (``None``: equal to ``rank``, scaling 1) goes to the methods that scale (LoRA, DoRA, LoHa, LoKr, AdaLoRA) and
``dropout`` to those with an input dropout (LoRA, DoRA, AdaLoRA, VeRA); ``extra`` passes any other keyword of the peft
config (``adapter.options: {extra: {use_effective_conv2d: true}}``). A knob value peft refuses (an OFT block size
that does not divide a layer's width) is refused before training with peft's reason.

Layer types: every method takes ``nn.Linear`` and ``nn.Conv2d`` with ``groups = 1`` except VeRA, which peft
implements for ``nn.Linear`` only; a matched layer a method does not support is refused by name before anything
changes. AdaLoRA's schedule (``tinit``, ``tfinal``) is set from the run's step count when training starts: the
first 10 % of the steps train at full rank, pruning runs until 80 %, the last 20 % keep the final ranks
(peft's defaults are step counts, 0 and 0, written for runs of thousands of steps).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import peft
import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from medpeft.adapters.base import register_adapter, register_adapter_module_type, weight_layer_refusal

__all__ = ["PEFT_METHODS", "PeftOptions", "peft_tuner"]

register_adapter_module_type(BaseTunerLayer)

TUNER_ATTRIBUTE = "medpeft_peft_tuner"
ADAPTER_NAME = "default"
_PLACEHOLDER_STEPS = 1_000_000  # AdaLoRA's config needs a step count at injection; prepare() sets the run's
_TINIT_FRACTION, _TFINAL_FRACTION = 0.1, 0.2


@dataclass
class PeftOptions:
    """Options shared by peft's methods.

    Args:
        rank: The size knob (see the module docstring for what it sets in each method).
        alpha: Scaling numerator where the method scales; ``None`` means ``rank`` (scaling 1).
        dropout: Input dropout where the method has one; must be 0 for the others.
        extra: Further keyword arguments of the peft config class, passed as they are.
    """

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class _PeftMethod:
    """How one of peft's methods is configured and injected."""

    tuner: type[BaseTuner]
    make_config: Callable[[PeftOptions, list[str]], peft.PeftConfig]
    size_knob: str | None = "rank"
    linear_only: bool = False
    dropout: bool = False
    summary: str = ""
    hooks: dict[str, Callable] = field(default_factory=dict)  # prepare / on_step / regularization of AdapterMethod


def _alpha(options: PeftOptions) -> float:
    return float(options.rank if options.alpha is None else options.alpha)


def peft_tuner(root: nn.Module) -> BaseTuner:
    """The peft tuner object that injected ``root`` (AdaLoRA's rank allocator lives there)."""
    tuner = root.__dict__.get(TUNER_ATTRIBUTE)
    if tuner is None:
        raise ValueError("this model has no peft adapters")
    return tuner


def _prepare_adalora(root: nn.Module, total_steps: int) -> None:
    """Set AdaLoRA's schedule from the run's length (module docstring)."""
    config = peft_tuner(root).peft_config[ADAPTER_NAME]
    config.tinit = int(_TINIT_FRACTION * total_steps)
    config.tfinal = int(_TFINAL_FRACTION * total_steps)
    config.total_step = max(total_steps, config.tinit + config.tfinal + 1)


def _step_adalora(root: nn.Module, global_step: int) -> None:
    """Step AdaLoRA's rank allocator (needs the gradients of the step just taken)."""
    peft_tuner(root).update_and_allocate(global_step)


def _adalora_orthogonality(root: nn.Module) -> torch.Tensor | None:
    """AdaLoRA's regulariser ``sum ||P P^T - I||_F`` over every layer's ``A`` (rows) and ``B`` (columns), weighted
    by ``adapter.reg_weight`` in training (peft adds it inside its model's forward, which medpeft does not call)."""
    terms = []
    for module in root.modules():
        if isinstance(module, peft.tuners.adalora.AdaLoraLayer) and ADAPTER_NAME in module.lora_A:
            for factor in (module.lora_A[ADAPTER_NAME], module.lora_B[ADAPTER_NAME].T):
                gram = factor @ factor.T
                terms.append(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], device=gram.device)))
    return torch.stack(terms).sum() if terms else None


PEFT_METHODS: dict[str, _PeftMethod] = {
    "peft_lora": _PeftMethod(
        peft.tuners.lora.LoraModel,
        lambda o, t: peft.LoraConfig(
            r=o.rank, lora_alpha=_alpha(o), lora_dropout=o.dropout, target_modules=t, **o.extra
        ),
        dropout=True,
        summary="peft's LoRA, the oracle of medpeft's lora",
    ),
    "dora": _PeftMethod(
        peft.tuners.lora.LoraModel,
        lambda o, t: peft.LoraConfig(
            r=o.rank, lora_alpha=_alpha(o), lora_dropout=o.dropout, use_dora=True, target_modules=t, **o.extra
        ),
        dropout=True,
        summary="weight-decomposed LoRA: direction + magnitude",
    ),
    "loha": _PeftMethod(
        peft.tuners.loha.LoHaModel,
        lambda o, t: peft.LoHaConfig(r=o.rank, alpha=_alpha(o), target_modules=t, **o.extra),
        summary="Hadamard product of low-rank products",
    ),
    "lokr": _PeftMethod(
        peft.tuners.lokr.LoKrModel,
        lambda o, t: peft.LoKrConfig(r=o.rank, alpha=_alpha(o), target_modules=t, **o.extra),
        summary="Kronecker product with a low-rank factor",
    ),
    "oft": _PeftMethod(
        peft.tuners.oft.OFTModel,
        lambda o, t: peft.OFTConfig(r=0, oft_block_size=o.rank, target_modules=t, **o.extra),
        summary="block-diagonal orthogonal fine-tuning, rank = block size",
    ),
    "boft": _PeftMethod(
        peft.tuners.boft.BOFTModel,
        lambda o, t: peft.BOFTConfig(boft_block_size=o.rank, boft_block_num=0, target_modules=t, **o.extra),
        summary="butterfly orthogonal fine-tuning, rank = block size",
    ),
    "hra": _PeftMethod(
        peft.tuners.hra.HRAModel,
        lambda o, t: peft.HRAConfig(r=o.rank, target_modules=t, **o.extra),
        summary="Householder reflection adaptation",
    ),
    "vera": _PeftMethod(
        peft.tuners.vera.VeraModel,
        lambda o, t: peft.VeraConfig(r=o.rank, vera_dropout=o.dropout, target_modules=t, **o.extra),
        linear_only=True,
        dropout=True,
        summary="shared frozen random projections, trained scaling vectors",
    ),
    "adalora": _PeftMethod(
        peft.tuners.adalora.AdaLoraModel,
        lambda o, t: peft.AdaLoraConfig(
            init_r=o.rank,
            target_r=max(1, round(2 * o.rank / 3)),
            lora_alpha=_alpha(o),
            lora_dropout=o.dropout,
            total_step=_PLACEHOLDER_STEPS,
            target_modules=t,
            **o.extra,
        ),
        dropout=True,
        summary="SVD-form LoRA with rank allocation during training",
        hooks={"prepare": _prepare_adalora, "on_step": _step_adalora, "regularization": _adalora_orthogonality},
    ),
    "ia3": _PeftMethod(
        peft.tuners.ia3.IA3Model,
        lambda o, t: peft.IA3Config(target_modules=t, feedforward_modules=[], **o.extra),
        size_knob=None,
        summary="learned per-channel output scaling",
    ),
}


def _refusal(method: str, spec: _PeftMethod) -> Callable[[str, nn.Module], str | None]:
    def refuse(name: str, module: nn.Module) -> str | None:
        if spec.linear_only and isinstance(module, nn.Conv2d):
            return f"{name!r}, a {type(module).__name__}, which peft's {method} does not support (nn.Linear only)"
        return weight_layer_refusal(name, module)

    return refuse


def _applier(method: str, spec: _PeftMethod) -> Callable[[nn.Module, list, PeftOptions], list[str]]:
    def apply(root: nn.Module, matches: list[tuple[str, nn.Module, str]], options: PeftOptions) -> list[str]:
        """Inject peft's layers into the matched layers of ``root``; return the tensors peft left trainable."""
        if options.dropout and not spec.dropout:
            raise ValueError(f"peft's {method} has no input dropout; use dropout=0")
        try:
            with warnings.catch_warnings():
                # OFT "adjusts" a block size that does not divide a layer's width to another one; medpeft would
                # then record a knob the network does not have, so that adjustment is an error here
                warnings.filterwarnings("error", message=r"Invalid .*Adjusted", category=UserWarning)
                config = spec.make_config(options, [name for name, _, _ in matches])
                tuner = spec.tuner(root, config, ADAPTER_NAME)
        except (ValueError, TypeError, NotImplementedError, UserWarning) as err:
            raise ValueError(f"peft's {method} refused the options {options}: {err}") from err
        root.__dict__[TUNER_ATTRIBUTE] = tuner  # not a submodule: the tuner holds root itself
        prefixes = tuple(f"{name}." for name, _, _ in matches)
        return [
            name
            for name, parameter in root.named_parameters()
            if parameter.requires_grad and name.startswith(prefixes) and ".base_layer." not in f".{name}"
        ]

    return apply


def _cleanup(root: nn.Module) -> None:
    root.__dict__.pop(TUNER_ATTRIBUTE, None)


for _name, _spec in PEFT_METHODS.items():
    register_adapter(
        _name,
        PeftOptions,
        size_knob=_spec.size_knob,
        refuse=_refusal(_name, _spec),
        cleanup=_cleanup,
        source="peft",
        summary=_spec.summary,
        **_spec.hooks,
    )(_applier(_name, _spec))
