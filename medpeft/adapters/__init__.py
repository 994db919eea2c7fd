"""Adapters for parameter-efficient fine-tuning: LoRA, TRM (TLoRA), tCURLoRA and the baselines they are measured
against (``medpeft/adapters/methods.py`` lists them), all behind one registry (:data:`ADAPTERS`).

>>> import timm
>>> from medpeft.adapters import inject_adapters
>>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
>>> inject_adapters(model, method="tcurlora", targets=["blocks.*.attn.qkv"], rank=1)[:2]
['blocks.0.attn.qkv', 'blocks.1.attn.qkv']
"""

from __future__ import annotations

from medpeft.adapters.base import (
    ADAPTERS,
    AdapterLayer,
    AdapterMethod,
    AdapterModule,
    get_adapter_method,
    register_adapter,
)
from medpeft.adapters.budget import BudgetMatch, adapter_parameter_count, match_budget
from medpeft.adapters.inject import (
    PRESETS,
    adapter_layers,
    adapter_method_of,
    adapter_modules,
    adapter_parameters,
    inject_adapters,
    merge_adapters,
    prepare_adapters,
    regularization_loss,
    step_adapters,
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
    "AdapterMethod",
    "AdapterModule",
    "BudgetMatch",
    "LoRAConfig",
    "LoRALayer",
    "TCURGroup",
    "TCURLoRAConfig",
    "TCURLoRALayer",
    "TRMConfig",
    "TRMLayer",
    "adapter_layers",
    "adapter_method_of",
    "adapter_modules",
    "adapter_parameter_count",
    "adapter_parameters",
    "adapter_state_dict",
    "get_adapter_method",
    "inject_adapters",
    "load_adapter",
    "load_adapter_state_dict",
    "match_budget",
    "merge_adapters",
    "prepare_adapters",
    "register_adapter",
    "regularization_loss",
    "save_adapter",
    "step_adapters",
    "tcurlora_groups",
    "unmerge_adapters",
]
