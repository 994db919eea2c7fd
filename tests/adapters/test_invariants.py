"""Properties every adapter method must have on every encoder family (METHODS.md (a)-(d))."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from conftest import METHOD_OPTIONS, inject, make_encoder, randomize_adapters

from medpeft.adapters import (
    AdapterLayer,
    adapter_layers,
    adapter_parameters,
    merge_adapters,
    tcurlora_groups,
    unmerge_adapters,
)


def _inject(family: str, method: str, seed: int = 0):
    model, x = make_encoder(family, seed)
    names = inject(model, family, method)
    return model, x, names


def test_identity_at_init(family, method):
    base, x = make_encoder(family)
    with torch.no_grad():
        expected = base(x)
    model, x, names = _inject(family, method)
    assert names
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= 1e-5


def test_only_adapters_trainable_with_formula_counts(family, method):
    model, _, _ = _inject(family, method)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter_parameters(model)}
    layers = adapter_layers(model)
    for layer in layers.values():
        assert not any(p.requires_grad for p in layer.base_layer.parameters())

    options = METHOD_OPTIONS[method]
    expected = 0
    if method == "lora":
        for layer in layers.values():
            expected += options["rank"] * (layer.base_layer.weight[0].numel() + layer.base_layer.weight.shape[0])
    elif method == "trm":
        for layer in layers.values():
            weight = layer.base_layer.weight
            assert math.prod(layer.in_factors) == weight.shape[1]
            assert math.prod(layer.out_factors) == weight.shape[0]
            assert math.prod(layer.fan_in_factors) == weight[0].numel()
            r2 = options["rank"] ** 2
            expected += r2 * sum(i * i for i in layer.in_factors)
            expected += r2 * (sum(layer.out_factors) + sum(layer.fan_in_factors))
    else:
        # Members per square shape, counted independently from the module names (qkv counts three times).
        members: Counter = Counter()
        for name, layer in layers.items():
            weight = layer.base_layer.weight.reshape(layer.base_layer.weight.shape[0], -1)
            rows, cols = weight.shape
            if name.endswith("qkv") and rows == 3 * cols:
                members[(cols, cols)] += 3
            else:
                members[(rows, cols)] += 1
        assert len(tcurlora_groups(model)) == len(members)
        # Real and imaginary parts of dU at the n3 // 2 + 1 rfft frequencies, less the imaginary parts at
        # frequency 0 and (even n3) n3 / 2, which irfft ignores.
        r2 = options["rank"] ** 2
        expected = sum(2 * (n3 // 2 + 1) * r2 - (r2 if n3 % 2 else 2 * r2) for n3 in members.values())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_every_adapter_parameter_learns(family, method):
    model, x, _ = _inject(family, method)
    model.train()
    # tCURLoRA's cores scale products of two weight slices (~0.02 each at random init): its configs train them at
    # 100x the others' rate (ENCODER_LR_SCALES), and at 1e-2 two steps move a small random net's output by < 1e-5
    lr = 1.0 if method == "tcurlora" else 1e-2
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    with torch.no_grad():
        before = model.eval()(x)
    model.train()
    # Step 0 moves the zero-init factors; the second backward must then reach every parameter.
    for _ in range(2):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        optimizer.step()
    dead = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all() or g.abs().max() == 0]
    assert not dead, f"parameters without gradient: {dead}"
    if method == "tcurlora":
        assert all("tcur_dU" in n for n in grads)
    with torch.no_grad():  # relative: random-init heads give outputs from 1e-3 (DINOv2) to 1e+0 (ResNet)
        assert (model.eval()(x) - before).abs().max() > 1e-3 * before.abs().max()


def test_merge_unmerge_and_delta_weight(family, method):
    model, x, _ = _inject(family, method)
    randomize_adapters(model)
    originals = {n: l.base_layer.weight.detach().clone() for n, l in adapter_layers(model).items()}
    with torch.no_grad():
        unmerged = model(x)
        # delta_weight() must reproduce each layer: compare the wrapper with the plain op on W0 + delta.
        layers = list(adapter_layers(model).values())
        for layer in layers[:: max(1, len(layers) // 6)]:  # a spread of layers keeps the test fast
            weight = layer.base_layer.weight
            if layer.is_conv:
                probe = torch.randn(1, weight.shape[1], 9, 9)
                reference = F.conv2d(
                    probe,
                    weight + layer.delta_weight(),
                    layer.base_layer.bias,
                    layer.base_layer.stride,
                    layer.base_layer.padding,
                    layer.base_layer.dilation,
                )
            else:
                probe = torch.randn(3, weight.shape[1])
                reference = F.linear(probe, weight + layer.delta_weight(), layer.base_layer.bias)
            torch.testing.assert_close(layer(probe), reference, rtol=1e-4, atol=1e-5)
        assert max(layer.delta_weight().abs().max() for layer in adapter_layers(model).values()) > 0

        merge_adapters(model)
        assert all(layer.merged for layer in adapter_layers(model).values())
        torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)
        unmerge_adapters(model)
        for name, layer in adapter_layers(model).items():
            assert (layer.base_layer.weight - originals[name]).abs().max() <= 1e-5
        torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)


def test_merge_with_unload_gives_plain_layers(method):
    model, x, _ = _inject("vit", method)
    randomize_adapters(model)
    with torch.no_grad():
        expected = model(x)
        merge_adapters(model, unload=True)
        assert not any(isinstance(m, AdapterLayer) for m in model.modules())
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
