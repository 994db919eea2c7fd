"""AdaptFormer parallel bottlenecks against a hand-written reference (forward hooks on the plain model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_encoder, randomize_adapters

import medpeft.adapters.adaptformer  # noqa: F401  (registers the method)
from medpeft.adapters import (
    adapter_modules,
    adapter_parameters,
    get_adapter_method,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
)
from medpeft.adapters.adaptformer import AdaptFormerAdapter, AdaptFormerConfig


def _injected(family: str = "vit", targets=("mlp-module",), seed: int = 0, **options):
    model, x = make_encoder(family, seed)
    names = inject_adapters(model, "adaptformer", list(targets), **{"bottleneck": 8, **options})
    return model, x, names


def _reference_output(base: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor, scale: float) -> torch.Tensor:
    """The plain model with ``f(x) + s (W_up ReLU(W_down x + b_down) + b_up)`` hooked onto each adapted module."""

    def hook_for(adapter: AdaptFormerAdapter):
        down_w, down_b = adapter.adaptformer_down.weight, adapter.adaptformer_down.bias
        up_w, up_b = adapter.adaptformer_up.weight, adapter.adaptformer_up.bias
        return lambda module, args, out: out + scale * F.linear(F.relu(F.linear(args[0], down_w, down_b)), up_w, up_b)

    handles = [
        base.get_submodule(name).register_forward_hook(hook_for(a)) for name, a in adapter_modules(model).items()
    ]
    try:
        return base(x)
    finally:
        for handle in handles:
            handle.remove()


def test_registry_facts_and_option_checks():
    method = get_adapter_method("adaptformer")
    assert method.size_knob == "bottleneck" and method.default_targets == ("mlp-module",)
    assert "nonlinear" in method.merge_refusal
    assert AdaptFormerConfig().scale == 0.1  # the paper's s
    for bad in ({"bottleneck": 0}, {"scale": 0.0}, {"scale": float("nan")}, {"dropout": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AdaptFormerConfig(**bad)


@pytest.mark.parametrize("family, scale", [("vit", 0.1), ("vit", 0.5), ("dinov2", 0.1)])
def test_formula_matches_hand_written_reference(family, scale):
    base, _ = make_encoder(family)
    model, x, names = _injected(family, scale=scale)
    assert names and all(name.endswith(".mlp") for name in names)
    randomize_adapters(model, scale=0.2)
    with torch.no_grad():
        out, reference = model(x), _reference_output(base, model, x, scale)
        assert (out - base(x)).abs().max() > 0.05 * out.abs().max()  # the adapters change the output
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


def test_output_unchanged_at_init():
    base, x = make_encoder("vit")
    model, _, _ = _injected()
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
    for adapter in adapter_modules(model).values():
        assert adapter.adaptformer_down.weight.abs().max() > 0
        assert not adapter.adaptformer_up.weight.any() and not adapter.adaptformer_up.bias.any()


def test_merge_is_refused_with_the_reason():
    model, _, _ = _injected()
    with pytest.raises(ValueError, match=r"adaptformer cannot be merged .*nonlinear \(ReLU\) branch"):
        merge_adapters(model)


def test_adapter_file_round_trip_is_exact(tmp_path):
    model, x, _ = _injected(scale=0.3)
    randomize_adapters(model)
    save_adapter(model, tmp_path / "adaptformer.safetensors")
    fresh, _, _ = _injected(scale=0.3)
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "adaptformer.safetensors")
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("bottleneck", [3, 16])
def test_trainable_count_is_Din_m_plus_m_plus_m_Dout_plus_Dout(bottleneck):
    plain, _ = make_encoder("vit")
    model, _, names = _injected(bottleneck=bottleneck)
    expected = 0
    for name in names:
        mlp = plain.get_submodule(name)
        d_in, d_out = mlp.fc1.in_features, mlp.fc2.out_features
        expected += d_in * bottleneck + bottleneck + bottleneck * d_out + d_out
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(model)}
    assert sum(p.numel() for p in trainable) == expected


@pytest.mark.parametrize("layer, d_in, d_out", [("fc1", 192, 768), ("fc2", 768, 192)])
def test_non_square_bare_linear(layer, d_in, d_out):
    base, _ = make_encoder("vit")
    model, _, names = _injected(targets=[f"blocks.0.mlp.{layer}"], bottleneck=4, scale=0.5)
    adapter = model.get_submodule(names[0])
    assert (adapter.in_features, adapter.out_features) == (d_in, d_out)
    assert sum(p.numel() for p in adapter_parameters(model)) == d_in * 4 + 4 + 4 * d_out + d_out
    randomize_adapters(model, scale=0.2)
    tokens = torch.randn(2, 5, d_in)
    with torch.no_grad():
        branch = adapter.adaptformer_up(F.relu(adapter.adaptformer_down(tokens)))
        expected = base.get_submodule(names[0])(tokens) + 0.5 * branch
        torch.testing.assert_close(adapter(tokens), expected)


def test_gradients_reach_every_adapter_parameter_and_no_base_weight():
    model, x, _ = _injected()
    randomize_adapters(model)  # at init W_up = 0 blocks the gradient of W_down
    model(x).square().sum().backward()
    for parameter in adapter_parameters(model):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in model.named_parameters() if "base_layer" in name)


def test_dropout_only_in_training():
    model, x, _ = _injected(dropout=0.5)
    randomize_adapters(model, scale=0.2)
    model.eval()  # new modules start in training mode, as torch's do; the training loop sets the mode
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: no dropout
        model.train()
        assert not torch.equal(model(x), model(x))


def test_modules_without_linear_and_nested_targets_are_refused():
    model, _ = make_encoder("vit")
    with pytest.raises(ValueError, match=r"'blocks.0.norm2', a LayerNorm without any nn.Linear"):
        inject_adapters(model, "adaptformer", ["blocks.*.norm2"], bottleneck=4)
    with pytest.raises(ValueError, match=r"matched both 'blocks.0.mlp' and 'blocks.0.mlp.fc1', one inside the other"):
        inject_adapters(model, "adaptformer", ["mlp-module", "mlp"], bottleneck=4)
    assert not adapter_modules(model) and all(p.requires_grad for p in model.parameters())  # unchanged
