"""Gradient checkpointing of the encoder: block activations are recomputed in the backward pass instead of kept.

A checkpointed block keeps only its input for the backward pass and runs its forward a second time there to rebuild
the rest (Chen et al., 2016, arXiv 1604.06174). Peak training memory then holds the blocks' inputs plus one block's
activations instead of every block's, at the price of about one more encoder forward per step. Reference: timm's
``set_grad_checkpointing`` (``models/_manipulate.py``: ``checkpoint``, ``checkpoint_seq``).

:func:`enable_grad_checkpointing` switches it on one of two ways:

* ``"timm"``: the timm module has a working ``set_grad_checkpointing`` (timm 1.0.31, read in its source). Plain
  transformers, whose features come from ``forward_intermediates`` (ViT / DeiT, EVA, BEiT, SAM), then checkpoint every
  block. timm's ``features_only`` wrapper of hierarchical models (``FeatureListNet``: Swin, ResNet, ConvNeXt)
  checkpoints each of its top-level modules but the first and the last and in-place ones: stage by stage, the last
  stage (``layers_3``, ``layer4``, ``stages_3``) not at all. EfficientNet's features model checkpoints every stage.
* ``"torch.utils.checkpoint"``: otherwise every residual block (the ``blocks.<k>`` / ``layer<s>.<k>`` containers
  that ``adapter.blocks`` counts, :func:`medpeft.adapters.inject.block_indices`) runs through
  ``torch.utils.checkpoint.checkpoint``. Module names do not change, so adapters find the same targets.

Both are non-reentrant (``use_reentrant=False``): reentrant checkpointing runs the first forward without autograd, so
a block whose input needs no gradient (behind a frozen stem) would give its adapters none.

The recomputed forward must compute what the first one did. Dropout masks are the same (the checkpoint restores the
RNG state); tCURLoRA rebuilds its once-per-pass factors (:mod:`medpeft.adapters.tcurlora`); TRM and LoRA keep no
state across a pass (TRM picks its form from the input's shape, the same both times). BatchNorm in training mode
would update its running statistics a second time: hooks added here put them back after a recomputed forward.
"""

from __future__ import annotations

import functools
from typing import Any

import timm.layers
import torch
import torch.utils.checkpoint
from timm.models._features import FeatureGetterNet
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medpeft.adapters.inject import block_indices
from medpeft.adapters.recomputation import in_backward_pass

__all__ = ["enable_grad_checkpointing"]

_STASH_ATTRIBUTE = "_medpeft_statistics_before_recomputation"


def enable_grad_checkpointing(encoder: nn.Module) -> str:
    """Recompute the encoder's blocks in the backward pass; call before training, once per network.

    Args:
        encoder: A :class:`~medpeft.models.encoder.TimmEncoder` (its timm module is ``encoder.model``) or any module
            with residual blocks named ``blocks.<k>`` or ``layer<s>.<k>``.

    Returns:
        How it was enabled: ``"timm"`` (the timm module's ``set_grad_checkpointing``) or ``"torch.utils.checkpoint"``
        (every residual block wrapped).

    Raises:
        ValueError: If timm is set to reentrant checkpointing (``TIMM_REENTRANT_CKPT``), or the encoder has neither a
            working ``set_grad_checkpointing`` nor residual blocks; the message names the encoder.
    """
    name = getattr(encoder, "name", type(encoder).__name__)
    if timm.layers.use_reentrant_ckpt():
        raise ValueError(
            f"cannot checkpoint encoder {name!r}: timm is set to reentrant checkpointing (TIMM_REENTRANT_CKPT), "
            "which gives blocks behind frozen layers no gradient; unset it"
        )
    model = getattr(encoder, "model", encoder)
    if isinstance(model, FeatureGetterNet):  # it only calls forward_intermediates of the model it wraps
        model = model.model
    how = _timm_checkpointing(model) or _torch_checkpointing(model)
    if how is None:
        raise ValueError(
            f"cannot checkpoint encoder {name!r}: {type(model).__name__} has no working set_grad_checkpointing and "
            "no residual blocks ('blocks.<k>' or 'layer<s>.<k>') to wrap in torch.utils.checkpoint"
        )
    for module in encoder.modules():
        if isinstance(module, _BatchNorm):
            module.register_forward_pre_hook(_stash_statistics_before_recomputation)
            module.register_forward_hook(_restore_statistics_after_recomputation, always_call=True)
    return how


def _timm_checkpointing(model: nn.Module) -> str | None:
    """``"timm"`` after switching on timm's own checkpointing, ``None`` where the model has none."""
    if not hasattr(model, "set_grad_checkpointing"):
        return None
    try:
        model.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError):  # timm's way of saying "not supported" (Inception, NASNet, ...)
        return None
    return "timm"


def _torch_checkpointing(model: nn.Module) -> str | None:
    """``"torch.utils.checkpoint"`` after wrapping every residual block's forward, ``None`` where there is none."""
    blocks = list(block_indices(model))
    if not blocks:
        return None
    for name in blocks:
        block = model.get_submodule(name)
        # an instance attribute, so that the block and every module name stay as they are
        block.forward = functools.partial(_checkpointed_forward, block)
    return "torch.utils.checkpoint"


def _checkpointed_forward(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``block``'s own forward, its activations recomputed in the backward pass."""
    return torch.utils.checkpoint.checkpoint(type(block).forward, block, *args, use_reentrant=False, **kwargs)


def _stash_statistics_before_recomputation(module: _BatchNorm, _args: tuple) -> None:
    if module.training and module.track_running_stats and in_backward_pass():
        module.__dict__[_STASH_ATTRIBUTE] = [buffer.clone() for buffer in module.buffers(recurse=False)]


def _restore_statistics_after_recomputation(module: _BatchNorm, _args: tuple, _output: object) -> None:
    # always_call: a recomputation stops with an exception once it has rebuilt what the backward needs
    stash = module.__dict__.pop(_STASH_ATTRIBUTE, None)
    if stash is not None:
        with torch.no_grad():
            for buffer, saved in zip(module.buffers(recurse=False), stash):
                buffer.copy_(saved)
