"""The network a config describes: the segmenter (``model`` section) and which of its parameters train (``adapter``).

Training, pre-training export and evaluation all build networks here, so a checkpoint always meets the structure
it was saved from.
"""

from __future__ import annotations

import logging

from torch import nn

from medpeft.adapters import get_adapter_method, inject_adapters, match_budget
from medpeft.adapters.inject import ADAPTER_RECORD_ATTRIBUTE
from medpeft.experiment.config import AdapterConfig, Config
from medpeft.models import build_segmenter, enable_grad_checkpointing

__all__ = ["apply_finetuning", "segmenter_from_config", "size_facts"]

_logger = logging.getLogger(__name__)


def apply_finetuning(net: nn.Module, adapter: AdapterConfig) -> list[str]:
    """Set which parameters of ``net`` train, as ``adapter.method`` says; the decoder always trains.

    With ``adapter.budget`` set, the method's size knob is first chosen by :func:`medpeft.adapters.match_budget`
    (the file's value for it is replaced, and the choice logged); :func:`size_facts` reports it afterwards.

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
    options = adapter.method_options()
    match = None
    if adapter.budget is not None:
        match = match_budget(net.encoder, adapter.method, adapter.targets, adapter.budget, adapter.blocks, **options)
        if match.knob is not None:
            given = options.get(match.knob)
            options[match.knob] = match.value
            _logger.info(
                "adapter.budget %d: %s %s=%d (%d adapter parameters)%s",
                adapter.budget,
                adapter.method,
                match.knob,
                match.value,
                match.params,
                f"; the config's {match.knob} {given} is not used" if given else "",
            )
    names = inject_adapters(
        net.encoder, method=adapter.method, targets=adapter.targets, blocks=adapter.blocks, **options
    )
    if match is not None:
        getattr(net.encoder, ADAPTER_RECORD_ATTRIBUTE)["budget"] = match.as_dict()
    return names


def size_facts(net: nn.Module) -> dict[str, object]:
    """``metrics.json``'s size facts of an adapted ``net``: the method's size knob and its value, and with a budget
    the budget and the matched count (:meth:`~medpeft.adapters.BudgetMatch.as_dict`); empty for ``full`` and
    ``decoder_only``."""
    record = getattr(net.encoder, ADAPTER_RECORD_ATTRIBUTE, None)
    if record is None:
        return {}
    knob = get_adapter_method(record["method"]).size_knob
    facts: dict[str, object] = {"size_knob": knob, "size_knob_value": record["options"].get(knob) if knob else None}
    return {**facts, **record.get("budget", {})}


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
