"""Houlsby serial bottleneck adapters against a hand-written reference (forward hooks on the plain model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_encoder, randomize_adapters

import medpeft.adapters.houlsby  # noqa: F401  (registers the method)
from medpeft.adapters import (
    adapter_modules,
    adapter_parameters,
    get_adapter_method,
    inject_adapters,
    load_adapter,
    match_budget,
    merge_adapters,
    save_adapter,
)
from medpeft.adapters.houlsby import HoulsbyAdapter, HoulsbyConfig

TARGETS = ["attn-module", "mlp-module"]


def _injected(family: str = "vit", bottleneck: int = 8, targets=TARGETS, seed: int = 0):
    model, x = make_encoder(family, seed)
    names = inject_adapters(model, "houlsby", targets, bottleneck=bottleneck)
    return model, x, names


def _reference_output(base: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain model with ``h -> h + W_up GELU(W_down h + b_down) + b_up`` hooked onto each adapted module."""

    def hook_for(adapter: HoulsbyAdapter):
        down_w, down_b = adapter.houlsby_down.weight, adapter.houlsby_down.bias
        up_w, up_b = adapter.houlsby_up.weight, adapter.houlsby_up.bias
        return lambda module, args, h: h + F.linear(F.gelu(F.linear(h, down_w, down_b)), up_w, up_b)

    handles = [
        base.get_submodule(name).register_forward_hook(hook_for(a)) for name, a in adapter_modules(model).items()
    ]
    try:
        return base(x)
    finally:
        for handle in handles:
            handle.remove()


def test_registry_facts():
    method = get_adapter_method("houlsby")
    assert method.size_knob == "bottleneck" and method.default_targets == ("attn-module", "mlp-module")
    assert "nonlinear" in method.merge_refusal
    with pytest.raises(ValueError, match="bottleneck"):
        HoulsbyConfig(bottleneck=0)


@pytest.mark.parametrize("family", ["vit", "eva02"])  # EVA's attention takes rope=...: passed through the wrapper
def test_formula_matches_hand_written_reference(family):
    base, _ = make_encoder(family)
    model, x, names = _injected(family)
    assert names and all(name.endswith((".attn", ".mlp")) for name in names)
    randomize_adapters(model, scale=0.2)
    with torch.no_grad():
        out, reference = model(x), _reference_output(base, model, x)
        assert (out - base(x)).abs().max() > 0.05 * out.abs().max()  # the adapters change the output
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


def test_output_unchanged_at_init_and_paper_init():
    base, x = make_encoder("vit")
    model, _, _ = _injected()
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
    for adapter in adapter_modules(model).values():
        down = adapter.houlsby_down.weight
        assert down.abs().max() <= 2e-2 and 0.7e-2 < down.std() < 1.1e-2  # N(0, 1e-2) truncated at 2 std
        assert not adapter.houlsby_up.weight.any() and not adapter.houlsby_up.bias.any()
        assert not adapter.houlsby_down.bias.any()


def test_merge_is_refused_with_the_reason():
    model, _, _ = _injected()
    with pytest.raises(ValueError, match=r"houlsby cannot be merged .*nonlinear \(GELU\) bottleneck"):
        merge_adapters(model)


def test_adapter_file_round_trip_is_exact(tmp_path):
    model, x, _ = _injected()
    randomize_adapters(model)
    save_adapter(model, tmp_path / "houlsby.safetensors")
    fresh, _, _ = _injected()
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "houlsby.safetensors")
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("bottleneck", [3, 16])
def test_trainable_count_is_2Dm_plus_m_plus_D(bottleneck):
    plain, _ = make_encoder("vit")
    model, _, names = _injected(bottleneck=bottleneck)
    expected = 0
    for name in names:
        module = plain.get_submodule(name)
        d = module.proj.out_features if name.endswith(".attn") else module.fc2.out_features
        expected += 2 * d * bottleneck + bottleneck + d
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(model)}
    assert sum(p.numel() for p in trainable) == expected == len(names) * (2 * 192 * bottleneck + bottleneck + 192)


def test_budget_chooses_the_bottleneck_by_the_formula():
    def count(m: int) -> int:
        return 24 * (2 * 192 * m + m + 192)  # 12 blocks x (attn, mlp), D = 192

    model, _ = make_encoder("vit")
    found = match_budget(model, "houlsby", TARGETS, budget=count(5) + 10)
    assert (found.knob, found.value, found.params) == ("bottleneck", 5, count(5))


def test_gradients_reach_every_adapter_parameter_and_no_base_weight():
    model, x, _ = _injected()
    randomize_adapters(model)  # at init W_up = 0 blocks the gradient of W_down
    model(x).square().sum().backward()
    for parameter in adapter_parameters(model):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in model.named_parameters() if "base_layer" in name)


def test_bare_non_square_linear_uses_its_out_features():
    base, _ = make_encoder("vit")
    model, _, names = _injected(bottleneck=4, targets=["blocks.0.mlp.fc1"])  # 192 -> 768
    adapter = model.blocks[0].mlp.fc1
    assert names == ["blocks.0.mlp.fc1"] and isinstance(adapter, HoulsbyAdapter) and adapter.dim == 768
    assert sum(p.numel() for p in adapter_parameters(model)) == 2 * 768 * 4 + 4 + 768
    randomize_adapters(model, scale=0.2)
    tokens = torch.randn(2, 5, 192)
    with torch.no_grad():
        h = base.blocks[0].mlp.fc1(tokens)
        expected = h + adapter.houlsby_up(F.gelu(adapter.houlsby_down(h)))
        torch.testing.assert_close(adapter(tokens), expected)


def test_modules_without_linear_and_nested_targets_are_refused():
    model, _ = make_encoder("vit")
    with pytest.raises(ValueError, match=r"'blocks.0.norm1', a LayerNorm without any nn.Linear"):
        inject_adapters(model, "houlsby", ["blocks.*.norm1"], bottleneck=4)
    with pytest.raises(ValueError, match=r"matched both 'blocks.0' and 'blocks.0.attn', one inside the other"):
        inject_adapters(model, "houlsby", ["blocks", "attn-module"], bottleneck=4)
    assert not adapter_modules(model) and all(p.requires_grad for p in model.parameters())  # unchanged
