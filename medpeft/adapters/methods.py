"""The adapter methods medpeft ships: importing this module registers every one of them.

A new method is one file under ``medpeft/adapters/`` that decorates its ``apply`` with
:func:`~medpeft.adapters.base.register_adapter`, plus its module name in :data:`METHOD_MODULES`; nothing else in
medpeft names methods (configs, sweeps, tables, adapter and task files all read the registry).
"""

from __future__ import annotations

import importlib

__all__ = ["METHOD_MODULES"]

#: Modules under ``medpeft.adapters`` that register methods, in the order tables list them.
METHOD_MODULES: tuple[str, ...] = (
    "lora",
    "trm",
    "tcurlora",
    "houlsby",
    "adaptformer",
    "vpt",
    "ssf",
    "bitfit",
    "norm_tuning",
    "conv_adapter",
    "pissa",
    "curlora",
    "lotr",
    "peft_methods",  # peft_lora, dora, loha, lokr, oft, boft, hra, vera, adalora, ia3 from Hugging Face peft
)

for _module in METHOD_MODULES:
    importlib.import_module(f"medpeft.adapters.{_module}")
