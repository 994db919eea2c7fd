"""Adapters for parameter-efficient fine-tuning: LoRA, TRM (TLoRA) and tCURLoRA.

>>> import timm
>>> from medpeft.adapters import inject_adapters
>>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
>>> inject_adapters(model, method="tcurlora", targets=["blocks.*.attn.qkv"], rank=1)[:2]
['blocks.0.attn.qkv', 'blocks.1.attn.qkv']
"""

from __future__ import annotations

from medpeft.adapters.base import ADAPTERS, AdapterLayer, register_adapter
from medpeft.adapters.inject import (
    PRESETS,
    adapter_layers,
    adapter_parameters,
    inject_adapters,
    merge_adapters,
    regularization_loss,
    tcurlora_groups,
    unmerge_adapters,
)
from medpeft.adapters.lora import LoRAConfig, LoRALayer
from medpeft.adapters.state import adapter_state_dict, load_adapter, load_adapter_state_dict, save_adapter
from medpeft.adapters.tcurlora import TCURGroup, TCURLoRAConfig, TCURLoRALayer
from medpeft.adapters.trm import TRMConfig, TRMLayer

__all__ = [
    "ADAPTERS",
    "PRESETS",
    "AdapterLayer",
    "LoRAConfig",
    "LoRALayer",
    "TCURGroup",
    "TCURLoRAConfig",
    "TCURLoRALayer",
    "TRMConfig",
    "TRMLayer",
    "adapter_layers",
    "adapter_parameters",
    "adapter_state_dict",
    "inject_adapters",
    "load_adapter",
    "load_adapter_state_dict",
    "merge_adapters",
    "register_adapter",
    "regularization_loss",
    "save_adapter",
    "tcurlora_groups",
    "unmerge_adapters",
]
