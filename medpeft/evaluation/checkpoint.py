"""Rebuild a trained network from a run's config and a checkpoint file (Lightning ``.ckpt`` or ``.safetensors``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from medpeft.experiment.config import Config
from medpeft.experiment.network import apply_finetuning, segmenter_from_config

__all__ = ["find_run_checkpoint", "load_network_state", "load_trained_network", "recorded_best_checkpoint"]


def find_run_checkpoint(run_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint a run was (or, unfinished, would be) tested with.

    In order: ``metrics.json``'s ``best_checkpoint``; the best checkpoint that ``checkpoints/last.ckpt``'s
    ``ModelCheckpoint`` state names (the run's own record of which file scored best, so a stray older ``best-*.ckpt``
    is never taken for it); the one ``checkpoints/best-*.ckpt``; ``checkpoints/last.ckpt`` (no validation ran).

    Raises:
        FileNotFoundError: Naming the run directory, when it holds none of them, or several ``best-*.ckpt`` files
            and no record of which one is best.
    """
    run = Path(run_dir)
    metrics = run / "metrics.json"
    if metrics.is_file():
        recorded = json.loads(metrics.read_text()).get("best_checkpoint")
        if recorded and (run / recorded).is_file():
            return run / recorded
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file() and (best := recorded_best_checkpoint(last)) is not None:
        return best
    candidates = sorted((run / "checkpoints").glob("best-*.ckpt"))
    if len(candidates) > 1:
        names = ", ".join(path.name for path in candidates)
        raise FileNotFoundError(f"{run}: several best checkpoints ({names}) and no record of which is best")
    if candidates:
        return candidates[0]
    if last.is_file():
        return last
    raise FileNotFoundError(f"{run}: no checkpoint found (looked for checkpoints/best-*.ckpt and last.ckpt)")


def recorded_best_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The best checkpoint that a Lightning checkpoint's ``ModelCheckpoint`` state names, if that file exists beside
    it; ``None`` when it names none (no validation yet) or the file is gone. Read with ``weights_only=True``."""
    callbacks = torch.load(path, map_location="cpu", weights_only=True).get("callbacks", {})
    for state in callbacks.values():
        if isinstance(state, dict) and state.get("best_model_path"):
            best = Path(path).parent / Path(state["best_model_path"]).name
            return best if best.is_file() else None
    return None


def load_network_state(net: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a checkpoint's weights into ``net`` (strict: every key must match).

    Accepts a Lightning checkpoint (``state_dict`` keys prefixed ``net.``, read with ``weights_only=True``) or a
    ``.safetensors`` file of ``net.state_dict()``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = {
            key.removeprefix("net."): value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith("net.")
        }
    net.load_state_dict(state, strict=True)


def load_trained_network(cfg: Config, checkpoint: str | os.PathLike[str]) -> nn.Module:
    """Build the network as the run did (``model.pretrained`` weights, then the adapters), then load ``checkpoint``.

    The pretrained weights are loaded first because tCURLoRA's column / row factors are taken from the frozen
    weights at injection (they are not stored in checkpoints).
    """
    net = segmenter_from_config(cfg)
    apply_finetuning(net, cfg.adapter)
    load_network_state(net, checkpoint)
    return net.eval()
