"""Task files: everything a run trained, in one small ``.safetensors``, rebuilt on the base encoder it came from.

A task file holds the trained tensors and, in its header (one key, ``medpeft_task``, sorted JSON), what is needed
to rebuild the network: the run's resolved config (YAML), the SHA-256 of the ``model.pretrained`` file the encoder
started from, the class names and the format version. Tensors by role:

- ``decoder.<name>``: the decoder and head, always;
- ``adapter.<name>``: the adapter tensors and metadata of :func:`~medpeft.adapters.adapter_state_dict` (PEFT methods;
  the BatchNorm statistics too when ``adapter.adapt_norm`` moved them);
- ``encoder.<name>``: the whole encoder, when it is not the pretrained file's (``full``, ``model.pretrained: false``,
  or ``decoder_only`` with adapted BatchNorm statistics): then the file is as large as the encoder.

Loading rebuilds the network from the config (pretrained weights first, then the adapters) and refuses a
``model.pretrained`` file whose bytes differ from those the run trained on, naming both checksums: adapters only
make sense on the weights they were trained against. Only safetensors is read; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medpeft.adapters import adapter_state_dict, load_adapter_state_dict
from medpeft.data import dataset_info
from medpeft.experiment.config import Config, config_from_text, is_adapter_method
from medpeft.experiment.network import apply_finetuning, segmenter_from_config
from medpeft.io import atomic_output

__all__ = [
    "TASK_FORMAT",
    "TaskFileError",
    "file_sha256",
    "load_task",
    "read_task_metadata",
    "save_task",
    "swap_task",
]

TASK_FORMAT = "medpeft-task"
_HEADER_KEY = "medpeft_task"
_VERSION = 1


class TaskFileError(ValueError):
    """A task file that cannot be used: not one, or trained on other base weights than those found."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stores_encoder(cfg: Config, encoder: nn.Module) -> bool:
    """Whether the trained ``encoder`` differs from the pretrained file's, so the task file must carry it.

    ``decoder_only`` with adapted norms changes only BatchNorm statistics: an encoder without BatchNorm (ViT, Swin)
    is then still the pretrained file's.
    """
    if cfg.adapter.method == "full" or cfg.model.pretrained is False:
        return True
    adapted_norms = cfg.adapter.method == "decoder_only" and cfg.adapter.adapt_norm
    return adapted_norms and any(isinstance(module, _BatchNorm) for module in encoder.modules())


def _holds_encoder(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether a task file's tensors carry a whole encoder (``encoder.*``)."""
    return any(name.startswith("encoder.") for name in tensors)


def save_task(net: nn.Module, cfg: Config, path: str | os.PathLike[str]) -> int:
    """Write ``net``'s trained tensors and the metadata to rebuild it to ``path`` (atomically); return its size.

    Args:
        net: The trained segmenter (adapters injected, not merged).
        cfg: The run's config.
        path: Destination ``.safetensors``.
    """
    state: dict[str, torch.Tensor] = {f"decoder.{k}": v for k, v in net.decoder.state_dict().items()}
    if _stores_encoder(cfg, net.encoder):
        state.update({f"encoder.{k}": v for k, v in net.encoder.state_dict().items()})
    elif is_adapter_method(cfg.adapter.method):
        adapter = adapter_state_dict(net.encoder, norm_stats=cfg.adapter.adapt_norm)
        state.update({f"adapter.{k}": v for k, v in adapter.items()})
    pretrained = cfg.model.pretrained
    facts: dict[str, Any] = {
        "format": TASK_FORMAT,
        "version": _VERSION,
        "config": yaml.safe_dump(cfg.to_dict(), sort_keys=False),
        "pretrained_sha256": file_sha256(pretrained) if isinstance(pretrained, str) else None,
        "class_names": list(dataset_info(cfg.data.dataset).class_names),
    }
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    with atomic_output(path) as temporary:
        save_file(tensors, str(temporary), metadata={_HEADER_KEY: json.dumps(facts, sort_keys=True)})
    return Path(path).stat().st_size


def read_task_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a task file (config YAML, pretrained checksum, class names) without loading a tensor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = (handle.metadata() or {}).get(_HEADER_KEY)
    except Exception as err:  # not a safetensors file at all
        raise TaskFileError(f"{path} is not a safetensors task file ({err})") from err
    if header is None:
        raise TaskFileError(f"{path} is not a medpeft task file (no '{_HEADER_KEY}' header)")
    facts = json.loads(header)
    if facts.get("format") != TASK_FORMAT or facts.get("version") != _VERSION:
        raise TaskFileError(f"{path}: unsupported task file format {facts.get('format')} v{facts.get('version')}")
    return facts


def load_task(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, Config]:
    """Rebuild the network a task file describes, in eval mode, and return it with its config.

    Raises:
        FileNotFoundError: The task file, or the pretrained file it was trained on, is missing.
        TaskFileError: Not a task file, or ``model.pretrained`` now holds other bytes than at training.
        ValueError: The adapter tensors do not fit the rebuilt encoder (names each difference).
    """
    path = Path(path)
    facts = read_task_metadata(path)
    cfg = config_from_text(facts["config"], f"task file {path}")
    pretrained, expected = cfg.model.pretrained, facts.get("pretrained_sha256")
    if isinstance(pretrained, str) and expected is not None:
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"{path} was trained on the encoder weights {pretrained}, which are not there")
        found = file_sha256(pretrained)
        if found != expected:
            raise TaskFileError(
                f"{path} was trained on base encoder weights with SHA-256 {expected[:16]}..., but {pretrained} now "
                f"has {found[:16]}...: adapters only fit the weights they were trained on"
            )
    tensors = load_file(str(path))
    net = segmenter_from_config(cfg, pretrained=False if _holds_encoder(tensors) else None)
    apply_finetuning(net, cfg.adapter)
    _load_tensors(net, cfg, tensors)
    return net.to(device).eval(), cfg


def _load_tensors(net: nn.Module, cfg: Config, tensors: dict[str, torch.Tensor]) -> None:
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {key.removeprefix(prefix): value for key, value in tensors.items() if key.startswith(prefix)}

    device = next(net.parameters()).device
    net.decoder.load_state_dict({k: v.to(device) for k, v in part("decoder.").items()}, strict=True)
    if encoder := part("encoder."):
        net.encoder.load_state_dict(encoder, strict=True)
    elif is_adapter_method(cfg.adapter.method):
        load_adapter_state_dict(net.encoder, {k: v.to(device) for k, v in part("adapter.").items()})


def _structure(cfg: Config, facts: dict[str, Any]) -> dict[str, Any]:
    """What two task files must share for one loaded network to serve both."""
    adapter = {
        k: v for k, v in cfg.to_dict()["adapter"].items() if k not in ("reg_weight", "lora_plus_ratio")
    }  # training only
    return {
        "encoder": cfg.model.encoder,
        "pretrained weights (SHA-256)": facts.get("pretrained_sha256"),
        "decoder": (cfg.model.decoder, cfg.model.decoder_channels, cfg.model.num_classes),
        "image size and channels": (cfg.data.image_size, cfg.model.in_channels),
        "adapter section": adapter,
    }


def swap_task(net: nn.Module, cfg: Config, path: str | os.PathLike[str]) -> Config:
    """Switch ``net`` (loaded from a task file with config ``cfg``) to the task file at ``path``, in place.

    The base encoder stays loaded; only the decoder and the adapter tensors are copied in. Both task files must
    share the encoder, its pretrained weights, the decoder's shape and the adapter section (method, targets, rank,
    options), and neither may carry a whole encoder.

    Returns:
        The config of the task now loaded.

    Raises:
        TaskFileError: Naming what differs, when the two tasks cannot share one network.
    """
    path = Path(path)
    facts = read_task_metadata(path)
    new = config_from_text(facts["config"], f"task file {path}")
    current = _structure(cfg, {"pretrained_sha256": _loaded_sha(cfg)})
    wanted = _structure(new, facts)
    differences = [
        f"{key}: loaded {current[key]!r}, {path.name} {wanted[key]!r}" for key in wanted if current[key] != wanted[key]
    ]
    tensors = load_file(str(path))
    if _holds_encoder(tensors) or _stores_encoder(cfg, net.encoder):
        differences.append("a task file holding a whole encoder cannot share one")
    if differences:
        raise TaskFileError(f"{path} cannot reuse the loaded network: " + "; ".join(differences))
    _load_tensors(net, new, tensors)
    return new


def _loaded_sha(cfg: Config) -> str | None:
    pretrained = cfg.model.pretrained
    return file_sha256(pretrained) if isinstance(pretrained, str) and Path(pretrained).is_file() else None
