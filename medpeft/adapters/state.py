"""Adapter-only state dicts and ``.safetensors`` files.

An adapter state dict maps qualified names (relative to the injected module) to tensors: the state of every adapter
module (its parameters and persistent buffers outside the frozen ``base_layer`` it wraps, e.g. LoRA's factors, the
tCURLoRA groups' cores and selected ``col_index``/``row_index``, peft's layers), the model's own tensors the method
trains (BitFit's biases), and one extra entry,
:data:`CONFIG_KEY`, a ``uint8`` tensor holding JSON metadata (format version, method, options, target
patterns, block indices, adapted module names). Keeping the metadata inside the dict makes a plain
``safetensors.torch.save_file``/``load_file`` round trip self-describing; :func:`save_adapter` also copies
it into the file header, where ``safe_open(...).metadata()`` shows it without loading any tensor.
Base weights are never included. When the encoder's BatchNorm statistics were adapted during training
(``adapter.adapt_norm``), they are part of the trained model and are saved too, as ``norm_stats.<module>.<buffer>``
(``running_mean``, ``running_var``, ``num_batches_tracked``); loading restores them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medpeft.adapters.inject import ADAPTER_RECORD_ATTRIBUTE, adapter_modules, trained_base_parameters
from medpeft.io import atomic_output

__all__ = [
    "CONFIG_KEY",
    "NORM_PREFIX",
    "adapter_state_dict",
    "load_adapter",
    "load_adapter_state_dict",
    "norm_statistics",
    "save_adapter",
]

CONFIG_KEY = "medpeft.adapter_config"
NORM_PREFIX = "norm_stats."
FORMAT_VERSION = 1


def _record(model: nn.Module) -> dict[str, Any]:
    record = getattr(model, ADAPTER_RECORD_ATTRIBUTE, None)
    if record is None:
        raise ValueError("this model has no adapters: call inject_adapters(model, ...) first")
    return {"format": "medpeft-adapter", "version": FORMAT_VERSION, **record}


def norm_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """The running statistics of every BatchNorm layer of ``model``, keyed ``norm_stats.<module>.<buffer>``."""
    return {
        f"{NORM_PREFIX}{name}.{buffer_name}": buffer.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        for buffer_name, buffer in module.named_buffers(recurse=False)
        if buffer is not None
    }


def adapter_state_dict(model: nn.Module, norm_stats: bool = False) -> dict[str, torch.Tensor]:
    """Adapter tensors of ``model`` plus their metadata (see module docstring); no base weight.

    Args:
        model: An injected module.
        norm_stats: Also include the BatchNorm running statistics (when training adapted them).
    """
    state: dict[str, torch.Tensor] = dict(norm_statistics(model)) if norm_stats else {}
    for name, module in adapter_modules(model).items():
        for key, tensor in module.state_dict(keep_vars=True).items():
            if not key.startswith("base_layer.") and ".base_layer." not in f".{key}":
                state[f"{name}.{key}"] = tensor.detach().clone()
    for name, parameter in trained_base_parameters(model).items():
        state[name] = parameter.detach().clone()
    metadata = json.dumps(_record(model), sort_keys=True).encode()
    state[CONFIG_KEY] = torch.frombuffer(bytearray(metadata), dtype=torch.uint8)
    return state


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for key in ("method", "targets", "blocks"):
        if saved.get(key) != current.get(key):
            out.append(f"{key}: saved {saved.get(key)!r}, model {current.get(key)!r}")
    saved_options, current_options = saved.get("options", {}), current.get("options", {})
    for key in sorted(set(saved_options) | set(current_options)):
        if saved_options.get(key) != current_options.get(key):
            out.append(f"option {key}: saved {saved_options.get(key)!r}, model {current_options.get(key)!r}")
    saved_modules, current_modules = set(saved.get("modules", [])), set(current.get("modules", []))
    if saved_modules != current_modules:
        only_saved, only_model = sorted(saved_modules - current_modules), sorted(current_modules - saved_modules)
        out.append(f"adapted modules differ (only in file: {only_saved[:4]}, only in model: {only_model[:4]})")
    return out


def _is_selection(tensor: torch.Tensor) -> bool:
    """Whether an adapter buffer is an integer selection made from the frozen weights (tCURLoRA's and CURLoRA's
    column / row indices), which a loaded file must match rather than overwrite."""
    return not tensor.is_floating_point() and not tensor.is_complex()


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into ``model``, which must be injected with the same method and options.

    Raises:
        ValueError: the metadata, the selected tCURLoRA indices, or the tensor names/shapes differ; the
            message names each difference.
    """
    if CONFIG_KEY not in state:
        raise ValueError(f"not a medpeft adapter state dict: no {CONFIG_KEY!r} entry")
    saved = json.loads(bytes(state[CONFIG_KEY].tolist()).decode())
    differences = _differences(saved, _record(model))
    expected = adapter_state_dict(model)
    expected.pop(CONFIG_KEY)
    tensors = {key: value for key, value in state.items() if key != CONFIG_KEY and not key.startswith(NORM_PREFIX)}
    stats = {key: value for key, value in state.items() if key.startswith(NORM_PREFIX)}
    if stats:
        model_stats = norm_statistics(model)
        unknown = sorted(key for key in stats if key not in model_stats or model_stats[key].shape != stats[key].shape)
        if unknown:
            differences.append(f"BatchNorm statistics do not fit the model: {unknown[:4]}")
    if not differences:
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            differences.append(f"tensor names differ (missing: {missing[:4]}, unexpected: {unexpected[:4]})")
        for key in sorted(set(expected) & set(tensors)):
            if expected[key].shape != tensors[key].shape:
                differences.append(f"{key}: saved shape {list(tensors[key].shape)}, model {list(expected[key].shape)}")
            elif _is_selection(expected[key]) and not torch.equal(expected[key], tensors[key]):
                differences.append(
                    f"{key}: saved {tensors[key].tolist()}, model {expected[key].tolist()} "
                    "(the base weights differ from those the adapter was trained on)"
                )
    if differences:
        raise ValueError("adapter does not fit this model: " + "; ".join(differences))
    parameters = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for key, value in stats.items():
            buffers[key.removeprefix(NORM_PREFIX)].copy_(value)
        for key, value in tensors.items():
            if key in parameters:
                parameters[key].copy_(value)
            elif not _is_selection(buffers[key]):  # selections were checked equal above
                buffers[key].copy_(value)


def save_adapter(model: nn.Module, path: str | Path, norm_stats: bool = False) -> int:
    """Write the adapter state dict (with BatchNorm statistics if ``norm_stats``) to a ``.safetensors`` file
    atomically; returns its size in bytes."""
    path = Path(path)
    state = {key: value.contiguous().cpu() for key, value in adapter_state_dict(model, norm_stats).items()}
    header = {"medpeft": bytes(state[CONFIG_KEY].tolist()).decode()}
    with atomic_output(path) as temporary:
        save_file(state, str(temporary), metadata=header)
    return path.stat().st_size


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Load a file written by :func:`save_adapter` into an identically injected ``model``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("medpeft") is None:
            raise ValueError(f"{path} is not a medpeft adapter file (no 'medpeft' header metadata)")
    device = next(model.parameters()).device
    load_adapter_state_dict(model, load_file(str(path), device=str(device)))
