"""adapter.budget on vit_tiny and tf_efficientnet_lite0 (the encoders of the README's tables): every method with a size
knob gets the largest knob value that fits, and that lands within 10 % below the budget unless the knob itself is
coarser (one step of it adds more than 10 % of the budget: TRM's and tCURLoRA's counts grow with the square of their
rank) or the method cannot grow that far (LoKr's count stops growing once its factor is full rank, tCURLoRA's rank is
capped by its smallest group's width, OFT's block size must divide every width)."""

from __future__ import annotations

import pytest
import timm
import torch

from medpeft.adapters import ADAPTERS, adapter_parameter_count, match_budget

# (timm name, targets for weight-layer methods, budget): large enough that one step of LoRA's rank (36,864 parameters
# on vit_tiny, 21,184 on Lite-0's pointwise convolutions) is under 10 % of it.
ENCODERS = {
    "vit_tiny_patch16_224": (["attn", "mlp"], 400_000),
    "tf_efficientnet_lite0": (["conv"], 250_000),
}
# which methods fit which encoder (the others refuse its layers)
CNN_ONLY = {"conv_adapter"}
VIT_ONLY = {"houlsby", "adaptformer", "vpt", "vera"}


def _encoder(name: str) -> torch.nn.Module:
    kwargs = {"img_size": 32} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def _cases() -> list[tuple[str, str]]:
    cases = []
    for method, registered in sorted(ADAPTERS.items()):
        if registered.size_knob is None:
            continue
        for encoder in ENCODERS:
            if (encoder.startswith("vit") and method in CNN_ONLY) or (
                encoder.startswith("tf_") and method in VIT_ONLY
            ):
                continue
            cases.append((method, encoder))
    return cases


@pytest.mark.parametrize(("method", "encoder"), _cases())
def test_budget_lands_within_ten_percent_below(method, encoder):
    model = _encoder(encoder)
    weight_targets, budget = ENCODERS[encoder]
    targets = list(ADAPTERS[method].default_targets or weight_targets)
    match = match_budget(model, method, targets, budget)
    assert match.knob == ADAPTERS[method].size_knob
    assert match.params <= budget
    try:  # the next knob value does not fit, is refused, or adds nothing: the match is the largest that does
        above = adapter_parameter_count(model, method, targets, **{match.knob: match.value + 1})
    except ValueError:
        above = None
    assert above is None or above > budget or above == match.params
    if above is not None and above > budget and above - match.params <= 0.1 * budget:
        assert match.params >= 0.9 * budget, f"{method} {match.knob}={match.value}: {match.params} of {budget}"
    print(
        f"{method} on {encoder}: {match.knob}={match.value}, {match.params} of {budget} ({match.params / budget:.0%})"
    )


def test_budget_below_the_smallest_adapter_is_refused_with_its_count():
    model = _encoder("vit_tiny_patch16_224")
    with pytest.raises(ValueError, match=r"below the smallest lora \(rank=1: 36864 parameters\)"):
        match_budget(model, "lora", ["attn", "mlp"], 1000)


def test_fixed_size_methods_report_their_count():
    model = _encoder("vit_tiny_patch16_224")
    match = match_budget(model, "ia3", ["attn", "mlp"], 10**6)
    assert match.knob is None and match.value is None
    assert match.params == 12 * (576 + 192 + 768 + 192)  # one scale per output of qkv, proj, fc1, fc2


def test_a_method_that_refuses_its_smallest_size_says_why():
    model = _encoder("vit_tiny_patch16_224")
    with pytest.raises(ValueError, match=r"matched no module"):
        match_budget(model, "lora", ["no_such_layer"], 10**6)
