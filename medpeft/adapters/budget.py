"""Parameter budgets: choose a method's size knob so that its adapter has as many parameters as fit in a budget.

Every method with a size knob (:attr:`~medpeft.adapters.base.AdapterMethod.size_knob`: LoRA's rank, a bottleneck
width, VPT's prompt count, ...) grows monotonically with it, so the largest knob value whose adapter parameter count
(:func:`~medpeft.adapters.adapter_parameters`, what trains in the encoder) does not exceed the budget is found by
doubling and then bisection, each probe an injection into a copy of the model. A knob value the method refuses (a rank
above a layer's size) counts as over the budget. Methods without a knob (BitFit, IA3, normalisation tuning) have one
size, reported as it is. A count that stops growing with the knob (LoKr's, once its factor is full rank) is reported
at the smallest knob value that gives it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from medpeft.adapters.base import get_adapter_method
from medpeft.adapters.inject import adapter_parameters, inject_adapters

__all__ = ["BudgetMatch", "adapter_parameter_count", "match_budget"]

_logger = logging.getLogger(__name__)
_LARGEST_KNOB = 1 << 12  # no knob of a shipped method means anything above a layer's width


@dataclass(frozen=True)
class BudgetMatch:
    """The outcome of :func:`match_budget`.

    Args:
        knob: The option chosen (``"rank"``), ``None`` for a method of fixed size.
        value: Its value, ``None`` for a method of fixed size.
        params: The adapter's parameter count at that value.
        budget: The budget asked for.
    """

    knob: str | None
    value: int | None
    params: int
    budget: int

    @property
    def within_budget(self) -> bool:
        return self.params <= self.budget

    def as_dict(self) -> dict[str, Any]:
        """For ``metrics.json``: ``budget``, ``budget_knob``, ``budget_knob_value``, ``budget_params``."""
        return {
            "budget": self.budget,
            "budget_knob": self.knob,
            "budget_knob_value": self.value,
            "budget_params": self.params,
        }


def adapter_parameter_count(
    model: nn.Module, method: str, targets: str | Iterable[str], blocks: Iterable[int] | None = None, **options: Any
) -> int:
    """Adapter parameters ``method`` with ``options`` adds to ``model`` (injected into a copy; ``model`` is unchanged)."""
    probe = copy.deepcopy(model)
    inject_adapters(probe, method, targets, blocks, **options)
    return sum(parameter.numel() for parameter in adapter_parameters(probe))


def match_budget(
    model: nn.Module,
    method: str,
    targets: str | Iterable[str],
    budget: int,
    blocks: Iterable[int] | None = None,
    **options: Any,
) -> BudgetMatch:
    """The largest size-knob value of ``method`` whose adapter fits in ``budget`` parameters.

    Args:
        model: The encoder (not changed).
        method: A registered adapter method.
        targets: As for :func:`~medpeft.adapters.inject_adapters`.
        budget: The most adapter parameters allowed.
        blocks: As for :func:`~medpeft.adapters.inject_adapters`.
        **options: The method's other options (a value given for the knob is replaced).

    Raises:
        ValueError: Even the smallest knob value (1) exceeds the budget; the message gives its count.
    """
    targets = list([targets] if isinstance(targets, str) else targets)
    blocks = None if blocks is None else list(blocks)
    knob = get_adapter_method(method).size_knob
    if knob is None:
        params = adapter_parameter_count(model, method, targets, blocks, **options)
        if params > budget:
            _logger.warning("%s has no size knob; its %d parameters exceed the budget %d", method, params, budget)
        return BudgetMatch(None, None, params, budget)

    def count(value: int) -> int | None:
        """Parameters at ``value``; ``None`` when the method refuses it (counted as over the budget)."""
        try:
            return adapter_parameter_count(model, method, targets, blocks, **{**options, knob: value})
        except ValueError:
            return None

    # no try here: a method that refuses even its smallest size (targets that match nothing, ...) says why
    smallest = adapter_parameter_count(model, method, targets, blocks, **{**options, knob: 1})
    if smallest > budget:
        raise ValueError(
            f"adapter.budget {budget} is below the smallest {method} ({knob}=1: {smallest} parameters); raise the "
            "budget or choose fewer targets"
        )
    low, low_params, high = 1, smallest, None  # count(low) fits; count(high) does not (None: not found yet)
    while high is None:
        probe = low * 2
        params = count(probe) if probe <= _LARGEST_KNOB else None
        if params == low_params:  # the count stopped growing (LoKr's full-rank factor): nothing larger helps
            break
        if params is None or params > budget:
            high = probe
        else:
            low, low_params = probe, params
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        params = count(middle)
        if params is None or params > budget:
            high = middle
        else:
            low, low_params = middle, params
    # a count that stopped growing is reported at the smallest knob giving it
    smallest_same = low
    while smallest_same > 1 and count(smallest_same - 1) == low_params:
        below, step = smallest_same - 1, 1
        while below - step >= 1 and count(below - step) == low_params:
            below, step = below - step, step * 2
        smallest_same = below
    return BudgetMatch(knob, smallest_same, low_params, budget)
