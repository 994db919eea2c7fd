"""The network a config describes: the segmenter (``model`` section) and which of its parameters train (``adapter``).

Training, pre-training export and evaluation all build networks here, so a checkpoint always meets the structure
it was saved from.
"""

from __future__ import annotations

import logging

from torch import nn

from medpeft.adapters import inject_adapters
from medpeft.experiment.config import AdapterConfig, Config
from medpeft.models import build_segmenter, enable_grad_checkpointing

__all__ = ["apply_finetuning", "segmenter_from_config"]

_logger = logging.getLogger(__name__)


def apply_finetuning(net: nn.Module, adapter: AdapterConfig) -> list[str]:
    """Set which parameters of ``net`` train, as ``adapter.method`` says; the decoder always trains.

    Args:
        net: A segmenter from :func:`medpeft.models.build_segmenter` (has ``.encoder``).
        adapter: The ``adapter`` config section.

    Returns:
        The qualified names (inside ``net.encoder``) of the layers given adapters; empty for ``full`` and
        ``decoder_only``.

    Raises:
        ValueError: The adapter options do not fit the encoder (e.g. ``targets`` match no layer).
    """
    net.requires_grad_(True)
    if adapter.method == "full":
        return []
    if adapter.method == "decoder_only":
        net.encoder.requires_grad_(False)
        return []
    return inject_adapters(
        net.encoder,
        method=adapter.method,
        targets=adapter.targets,
        blocks=adapter.blocks,
        rank=adapter.rank,
        **adapter.method_options(),
    )


def segmenter_from_config(cfg: Config, pretrained: bool | str | None = None) -> nn.Module:
    """Build the network the ``model`` section (and ``data.image_size``) describes.

    Args:
        cfg: A validated config.
        pretrained: Overrides ``model.pretrained``, e.g. ``False`` when a checkpoint is loaded next.

    Raises:
        ValueError: ``model.grad_checkpointing`` is set and the encoder cannot be checkpointed.
    """
    net = build_segmenter(
        encoder=cfg.model.encoder,
        pretrained=cfg.model.pretrained if pretrained is None else pretrained,
        decoder=cfg.model.decoder,
        in_channels=cfg.model.in_channels,
        num_classes=cfg.model.num_classes,
        img_size=cfg.data.image_size,
        decoder_channels=cfg.model.decoder_channels,
    )
    if cfg.model.grad_checkpointing:
        how = enable_grad_checkpointing(net.encoder)
        _logger.info("Gradient checkpointing of the %s encoder through %s.", cfg.model.encoder, how)
    return net
