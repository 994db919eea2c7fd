"""Telling a checkpointed block's recomputation from its first forward, and keeping work out of the checkpoint's books.

Gradient checkpointing (:mod:`medpeft.models.checkpointing`, PyTorch's non-reentrant ``torch.utils.checkpoint``)
discards what a block saved for its backward and runs the block's forward again *inside the backward pass* to rebuild
it. The checkpoint matches the tensors saved by the recomputation to those of the first run one by one, in order, so
the recomputed forward must save exactly what the first one did. Modules with state across a forward pass must take
care there: tCURLoRA's once-per-pass factors (:mod:`medpeft.adapters.tcurlora`) and BatchNorm's running statistics
(:mod:`medpeft.models.checkpointing`).
"""

from __future__ import annotations

import torch

__all__ = ["in_backward_pass", "saved_outside_checkpoints"]


def in_backward_pass() -> bool:
    """Whether this thread is running autograd's backward, where checkpointed forwards are recomputed."""
    # The autograd engine's graph task on this thread is -1 outside a backward: PyTorch's FSDP and
    # torch.utils.module_tracker tell a recomputed forward from the first one by the same test.
    return torch._C._current_graph_task_id() != -1


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def saved_outside_checkpoints() -> torch.autograd.graph.saved_tensors_hooks:
    """A context whose operations save their tensors for backward as usual, even inside a checkpointed block.

    Saved-tensor hooks nest, the innermost applying, so a checkpoint around the context neither discards these
    tensors nor counts them: work inside may run in one of a block's forwards and not in the other (found in a cache
    the first time, rebuilt in the recomputation) without the checkpoint seeing a different sequence of saved tensors.
    """
    return torch.autograd.graph.saved_tensors_hooks(_same, _same)
