"""SSF: hand-written reference, identity at init, exact merge / unmerge, adapter files, counts, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_encoder, randomize_adapters
from timm.layers import Conv2dSame, StdConv2d
from torch import nn

import medpeft.adapters.ssf  # noqa: F401  (registers "ssf")
from medpeft.adapters import (
    adapter_layers,
    adapter_parameters,
    get_adapter_method,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from medpeft.adapters.ssf import SSFConfig, SSFLayer

# ViT's linear layers; EfficientNet-Lite's pointwise convolutions and its depthwise ones (some are Conv2dSame)
TARGETS = {"vit": ["attn", "mlp"], "efficientnet": ["conv", "*conv_dw"], "resnet": ["conv"]}


class TinyNet(nn.Module):
    """Non-square layers: a conv with bias, a bias-free grouped conv, a depthwise TF-"same" conv, linears."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, kernel_size=3, stride=2, padding=1)
        self.grouped = nn.Conv2d(6, 4, kernel_size=3, padding=1, groups=2, bias=False)
        self.depthwise = Conv2dSame(4, 4, kernel_size=3, stride=2, groups=4, bias=False)
        self.lin = nn.Linear(4, 5)
        self.lin_nobias = nn.Linear(5, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, H, W] -> [B, 3]
        return self.lin_nobias(self.lin(self.depthwise(self.grouped(self.stem(x))).mean(dim=(2, 3))))


def _injected(family: str, seed: int = 0):
    model, x = make_encoder(family, seed)
    names = inject_adapters(model, "ssf", TARGETS[family])
    return model, x, names


def test_matches_hand_written_reference():
    torch.manual_seed(0)
    base = TinyNet().eval()
    model = copy.deepcopy(base)
    names = inject_adapters(model, "ssf", ["stem", "grouped", "depthwise", "lin", "lin_nobias"])
    assert len(names) == 5
    randomize_adapters(model, scale=0.5)
    layers = adapter_layers(model)
    x = torch.randn(2, 3, 9, 11)

    def ssf(name: str, y: torch.Tensor) -> torch.Tensor:
        gamma, beta = layers[name].ssf_scale, layers[name].ssf_shift
        return y * gamma[:, None, None] + beta[:, None, None] if y.dim() == 4 else y * gamma + beta

    with torch.no_grad():
        h = ssf("stem", F.conv2d(x, base.stem.weight, base.stem.bias, stride=2, padding=1))
        h = ssf("grouped", F.conv2d(h, base.grouped.weight, None, padding=1, groups=2))
        # TF "same" for a 3x3 stride-2 kernel on 5 x 6: pad (0, 1) rows and (0, 1)... computed by hand
        ih, iw = h.shape[-2:]
        pad_h, pad_w = max((-(-ih // 2) - 1) * 2 + 3 - ih, 0), max((-(-iw // 2) - 1) * 2 + 3 - iw, 0)
        padded = F.pad(h, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        h = ssf("depthwise", F.conv2d(padded, base.depthwise.weight, None, stride=2, groups=4)).mean(dim=(2, 3))
        h = ssf("lin", h @ base.lin.weight.T + base.lin.bias)
        expected = ssf("lin_nobias", h @ base.lin_nobias.weight.T)
        out = model(x)
        assert (out - base(x)).abs().max() > 1e-2
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", sorted(TARGETS))
def test_identity_at_init(family):
    base, x = make_encoder(family)
    model, _, names = _injected(family)
    assert names
    with torch.no_grad():
        assert torch.equal(model(x), base(x))  # gamma = 1 and beta = 0 exactly
    layer = SSFLayer(nn.Linear(4, 6), SSFConfig(init_std=0.02))  # the authors' noisy init is an option
    assert 0 < (layer.ssf_scale - 1).abs().max() < 0.2 and 0 < layer.ssf_shift.abs().max() < 0.2


@pytest.mark.parametrize("family", ["vit", "efficientnet"])
def test_merge_equals_unmerged_and_unmerge_restores_exactly(family):
    model, x, _ = _injected(family)
    randomize_adapters(model)
    layers = adapter_layers(model)
    if family == "efficientnet":  # depthwise convs are adapted too, Conv2dSame among them
        assert any(layer.base_layer.groups > 1 for layer in layers.values())
        assert any(isinstance(layer.base_layer, Conv2dSame) for layer in layers.values())
    originals = {n: (l.base_layer.weight.clone(), l.base_layer.bias) for n, l in layers.items()}
    original_biases = {n: None if b is None else b.clone() for n, (_, b) in originals.items()}
    with torch.no_grad():
        unmerged = model(x)
        merge_adapters(model)
        assert all(layer.merged for layer in layers.values())
        assert all(layer.base_layer.bias is not None for layer in layers.values())  # beta needs a bias
        torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)
        unmerge_adapters(model)
        for name, layer in layers.items():
            assert torch.equal(layer.base_layer.weight, originals[name][0])
            if original_biases[name] is None:
                assert layer.base_layer.bias is None  # the bias merge created is gone
            else:
                assert torch.equal(layer.base_layer.bias, original_biases[name])
        assert torch.equal(model(x), unmerged)
        merge_adapters(model, unload=True)
        assert not adapter_layers(model)
        torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)


def test_merge_writes_the_scaled_weight_and_bias():
    torch.manual_seed(0)
    layer = SSFLayer(nn.Conv2d(4, 6, kernel_size=3, padding=1), SSFConfig(init_std=0.3))
    weight, bias = layer.base_layer.weight.clone(), layer.base_layer.bias.clone()
    gamma, beta = layer.ssf_scale.detach(), layer.ssf_shift.detach()
    torch.testing.assert_close(layer.weight, weight * gamma[:, None, None, None])  # the effective weight
    layer.merge(safe=True)
    torch.testing.assert_close(layer.base_layer.weight, weight * gamma[:, None, None, None])
    torch.testing.assert_close(layer.base_layer.bias, gamma * bias + beta)
    torch.testing.assert_close(layer.delta_weight(), weight * (gamma - 1)[:, None, None, None])


def test_adapter_file_round_trip_is_exact(tmp_path):
    model, x, _ = _injected("efficientnet")
    randomize_adapters(model)
    save_adapter(model, tmp_path / "ssf.safetensors")
    fresh, _, _ = _injected("efficientnet")
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "ssf.safetensors")
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("family", sorted(TARGETS))
def test_count_is_two_per_output_channel_and_only_ssf_trains(family):
    model, _, names = _injected(family)
    expected = sum(2 * model.get_submodule(name).base_layer.weight.shape[0] for name in names)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert sum(p.numel() for _, p in trainable) == expected
    assert {id(p) for _, p in trainable} == {id(p) for p in adapter_parameters(model)}
    assert all(n.endswith(("ssf_scale", "ssf_shift")) for n, _ in trainable)
    assert get_adapter_method("ssf").size_knob is None and get_adapter_method("ssf").merge_refusal is None


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_gradients_reach_every_scale_and_shift(family):
    model, x, names = _injected(family)
    model(x).square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(grads) == 2 * len(names)
    dead = [n for n, g in grads.items() if g is None or g.abs().max() == 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_output_keeps_the_autocast_dtype():
    layer = SSFLayer(nn.Linear(8, 4), SSFConfig(init_std=0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16


def test_refusals():
    with pytest.raises(ValueError, match=r"'blocks.0.attn', a Attention; SSF scales"):
        inject_adapters(make_encoder("vit")[0], "ssf", ["blocks.0.attn"])
    std = nn.Sequential(StdConv2d(3, 4, kernel_size=3))
    with pytest.raises(ValueError, match="standardises its weight"):
        inject_adapters(std, "ssf", ["0"])
    # BEiT's attention runs F.linear(x, qkv.weight, cat(q_bias, k_bias, v_bias)): SSF on qkv would lose its shift
    beit, x = make_encoder("beit")
    with torch.no_grad():
        expected = beit(x)
    with pytest.raises(ValueError, match=r"SSF cannot follow \['blocks.0.attn.qkv', 'blocks.1.attn.qkv'\]"):
        inject_adapters(beit, "ssf", ["attn"])
    assert not adapter_layers(beit)  # refused before anything changed
    inject_adapters(beit, "ssf", ["blocks.*.attn.proj", "mlp"])
    with torch.no_grad():
        assert torch.equal(beit(x), expected)
    with pytest.raises(ValueError, match="init_std"):
        SSFConfig(init_std=-1.0)
