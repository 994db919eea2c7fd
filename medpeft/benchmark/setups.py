"""The networks a benchmark compares: one segmenter per fine-tuning method, our adapters and Hugging Face peft's LoRA.

Every setup is the whole segmenter (encoder + the encoder family's default decoder, 2 classes) at one image size,
random weights (timing and memory do not depend on the values), trained as ``scripts/train.py`` trains it: the
method's trainable parameters, frozen encoder BatchNorm except for ``full``, DiceCE loss plus the adapters'
regulariser, AdamW over :meth:`~medpeft.training.module.SegmentationModule.parameter_groups`. A setup may have its
encoder checkpointed (``model.grad_checkpointing``, :func:`~medpeft.models.enable_grad_checkpointing`); it is then told
apart from the method's plain setup by its :attr:`MethodSetup.key`.

``peft_lora`` is peft's LoRA (``inject_adapter_in_model``) on exactly the modules our ``lora`` adapts, at the same
rank and ``alpha = rank``: the reference our LoRA is timed against.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from medpeft.adapters import inject_adapters, merge_adapters
from medpeft.experiment.config import AdapterConfig
from medpeft.experiment.network import apply_finetuning
from medpeft.models import build_segmenter, count_parameters, enable_grad_checkpointing
from medpeft.training.module import SegmentationModule

__all__ = ["METHODS", "MethodSetup", "build_setup", "default_targets", "variant_key"]

#: Methods in table order; ``peft_lora`` is the external reference.
METHODS: tuple[str, ...] = ("full", "decoder_only", "lora", "peft_lora", "trm", "tcurlora")
#: Adapter options per method: comparable budgets on a ViT-B (LoRA r 8: 1.3 M, TRM R 2 D 3: 0.2 M, tCURLoRA r 8:
#: 3 K numbers); the ranks of the papers and of peft's examples.
DEFAULT_OPTIONS: dict[str, dict[str, int]] = {
    "lora": {"rank": 8},
    "peft_lora": {"rank": 8},
    "trm": {"rank": 2, "order": 3},
    "tcurlora": {"rank": 8},
}


def variant_key(method: str, grad_checkpointing: bool) -> str:
    """How timings and records name a setup: ``"lora"``, or ``"lora+grad_ckpt"`` with the encoder checkpointed."""
    return f"{method}+grad_ckpt" if grad_checkpointing else method


def default_targets(encoder: str) -> list[str]:
    """Adapter targets of the benchmark: attention and MLP of transformers, the convolutions of ResNets."""
    return ["conv"] if encoder.startswith("resnet") else ["attn", "mlp"]


@dataclass
class MethodSetup:
    """A network ready to train with one method.

    Args:
        method: One of :data:`METHODS`.
        net: The segmenter.
        module: Its training module (loss, regulariser, frozen norms).
        optimizer: AdamW over the trainable parameters.
        adapter_params: Numbers the method adds to the encoder.
        grad_checkpointing: Whether the encoder's blocks are recomputed in the backward pass.
    """

    method: str
    net: nn.Module
    module: SegmentationModule
    optimizer: torch.optim.Optimizer
    adapter_params: int = 0
    grad_checkpointing: bool = False
    trainable_params: int = field(init=False)

    def __post_init__(self) -> None:
        self.trainable_params = sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    @property
    def key(self) -> str:
        """The setup's name in timings (:func:`variant_key`)."""
        return variant_key(self.method, self.grad_checkpointing)

    def merge(self) -> None:
        """Fold the adapters into the weights (inference form); peft's LoRA layers merge themselves."""
        if self.method == "peft_lora":
            for layer in self.net.modules():
                if hasattr(layer, "merge") and hasattr(layer, "lora_A"):
                    layer.merge()
        elif self.method in ("lora", "trm", "tcurlora"):
            merge_adapters(self.net.encoder)


def _inject_peft_lora(net: nn.Module, targets: list[str], rank: int) -> int:
    from peft import LoraConfig, inject_adapter_in_model  # dev dependency: the benchmark's reference only

    names = inject_adapters(copy.deepcopy(net.encoder), "lora", targets, rank=rank)  # the modules ours adapts
    net.encoder.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=names), net.encoder)
    lora = [p for name, p in net.encoder.named_parameters() if "lora_" in name]
    for parameter in lora:
        parameter.requires_grad_(True)
    return sum(p.numel() for p in lora)


def build_setup(
    encoder: str, method: str, img_size: int, device: torch.device, seed: int = 0, grad_checkpointing: bool = False
) -> MethodSetup:
    """Build ``method``'s network on ``encoder`` at ``img_size`` px, with its training module and optimizer; with
    ``grad_checkpointing`` the encoder is checkpointed first, as ``scripts/train.py`` does it."""
    torch.manual_seed(seed)
    net = build_segmenter(encoder, pretrained=False, img_size=img_size, num_classes=2)
    if grad_checkpointing:
        enable_grad_checkpointing(net.encoder)
    targets = default_targets(encoder)
    options = dict(DEFAULT_OPTIONS.get(method, {}))
    adapter_params = 0
    if method == "peft_lora":
        net.requires_grad_(True)
        adapter_params = _inject_peft_lora(net, targets, options["rank"])
    else:
        apply_finetuning(net, AdapterConfig(method=method, targets=targets, **options))
        adapter_params = count_parameters(net)["adapter_params"]
    net.to(device)
    module = SegmentationModule(net, num_classes=2, freeze_encoder_norm=method != "full")
    optimizer = torch.optim.AdamW(module.parameter_groups(), lr=1e-4)
    return MethodSetup(method, net, module, optimizer, adapter_params, grad_checkpointing)
