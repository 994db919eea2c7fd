"""Which forward form each tensor adapter layer takes, measured: the per-layer rule against all-dense and
all-activation.

TRM and tCURLoRA layers choose between their effective-weight (dense) form and their activation form by an estimate
of multiply-adds (``prefers_activation_form``; see :mod:`medpeft.adapters.trm` and :mod:`medpeft.adapters.tcurlora`).
This module times whole training steps of one network with every layer forced into one form and with the rule, so
the rule's choice is checked against the clock rather than assumed.
"""

from __future__ import annotations

import torch

from medpeft.adapters.tcurlora import TCURLoRALayer
from medpeft.adapters.trm import TRMLayer
from medpeft.benchmark.measure import Timing, interleaved_step_times
from medpeft.benchmark.setups import build_setup

__all__ = ["FORM_POLICIES", "force_form", "form_step_times"]

#: ``dense``: every layer builds its effective weight; ``activation``: every layer that may (a plain linear / conv)
#: takes the activation form; ``rule``: each layer decides (what training uses).
FORM_POLICIES: tuple[str, ...] = ("dense", "activation", "rule")


def force_form(net: torch.nn.Module, policy: str) -> int:
    """Make every TRM / tCURLoRA layer of ``net`` follow ``policy``; return how many layers there are."""
    layers = [layer for layer in net.modules() if isinstance(layer, (TRMLayer, TCURLoRALayer))]
    for layer in layers:
        layer.__dict__.pop("prefers_activation_form", None)  # back to the class's rule
        if policy != "rule":
            activation = policy == "activation" and layer.activation_form_allowed
            layer.prefers_activation_form = lambda *_, choice=activation: choice
    return len(layers)


def form_step_times(
    encoder: str, methods: list[str], img_size: int, batch_size: int, iters: int, warmup: int, device: torch.device
) -> dict[str, Timing]:
    """Training-step seconds of TRM and tCURLoRA (those of ``methods``) under each policy, interleaved round by round.

    Returns:
        ``{method: {policy: [seconds per timed round]}}``.
    """
    timings = {}
    for method in (m for m in methods if m in ("trm", "tcurlora")):
        setups = []
        for policy in FORM_POLICIES:
            setup = build_setup(encoder, method, img_size, device)
            force_form(setup.net, policy)
            setup.method = policy  # the timing's key
            setups.append(setup)
        timings[method] = interleaved_step_times(setups, batch_size, img_size, iters, warmup)
    return timings
