"""Conv-Adapter: hand-written reference, identity at init, merge refused, adapter files, counts, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_encoder, randomize_adapters
from timm.layers import Conv2dSame
from torch import nn

import medpeft.adapters.conv_adapter  # noqa: F401  (registers "conv_adapter")
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
from medpeft.adapters.conv_adapter import ConvAdapterConfig, ConvAdapterLayer

# ResNet's block convolutions; EfficientNet-Lite's pointwise convolutions and, named explicitly, its depthwise ones
TARGETS = {"resnet": ["conv"], "efficientnet": ["conv", "*conv_dw"]}
BOTTLENECK = 4


class TinyNet(nn.Module):
    """Non-square convolutions: strided with bias, grouped and dilated, depthwise TF-"same" (dynamic padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, kernel_size=3, stride=2, padding=1)
        self.grouped = nn.Conv2d(6, 4, kernel_size=(3, 1), padding=(2, 0), dilation=2, groups=2, bias=False)
        self.depthwise = Conv2dSame(4, 4, kernel_size=3, stride=2, groups=4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(self.grouped(self.stem(x)))


def _injected(family: str, seed: int = 0, bottleneck: int = BOTTLENECK):
    model, x = make_encoder(family, seed)
    names = inject_adapters(model, "conv_adapter", TARGETS[family], bottleneck=bottleneck)
    return model, x, names


def _per_layer_count(conv: nn.Conv2d, m: int) -> int:
    kh, kw = conv.kernel_size
    return conv.in_channels * kh * kw + conv.in_channels * m + m * conv.out_channels + conv.out_channels


def test_matches_hand_written_reference():
    torch.manual_seed(0)
    base = TinyNet().eval()
    model = copy.deepcopy(base)
    assert inject_adapters(model, "conv_adapter", ["stem", "grouped", "depthwise"], bottleneck=3) == [
        "depthwise",
        "grouped",
        "stem",
    ]
    randomize_adapters(model, scale=0.5)
    layers = adapter_modules(model)

    def adapter(name: str, x: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
        layer = layers[name]
        h = F.conv2d(x, layer.adapter_dw.weight, None, stride, padding, dilation, groups=x.shape[1])
        h = F.conv2d(F.relu(F.conv2d(h, layer.adapter_down.weight)), layer.adapter_up.weight)
        return h * layer.adapter_scale[:, None, None]

    x = torch.randn(2, 3, 11, 13)
    with torch.no_grad():
        h = F.conv2d(x, base.stem.weight, base.stem.bias, 2, 1) + adapter("stem", x, 2, 1)
        h = F.conv2d(h, base.grouped.weight, None, 1, (2, 0), 2, groups=2) + adapter("grouped", h, 1, (2, 0), 2)
        # TensorFlow "same" for a 3x3 stride-2 kernel, computed by hand, for the base and the branch alike
        ih, iw = h.shape[-2:]
        pad_h, pad_w = max((-(-ih // 2) - 1) * 2 + 3 - ih, 0), max((-(-iw // 2) - 1) * 2 + 3 - iw, 0)
        padded = F.pad(h, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        expected = F.conv2d(padded, base.depthwise.weight, None, 2, groups=4) + adapter("depthwise", padded, 2)
        out = model(x)
        assert out.shape == base(x).shape and (out - base(x)).abs().max() > 1e-2
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(TARGETS))
def test_identity_at_init_and_merge_refused(family):
    base, x = make_encoder(family)
    model, _, names = _injected(family)
    if family == "efficientnet":
        assert any(n.endswith("conv_dw") for n in names) and any(n.endswith("conv_pwl") for n in names)
        depthwise = [m.base_layer for m in adapter_modules(model).values() if m.base_layer.groups > 1]
        assert depthwise and any(isinstance(conv, Conv2dSame) for conv in depthwise)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))  # zero up projection: the branch adds exact zeros
    with pytest.raises(ValueError, match="conv_adapter cannot be merged.*nonlinear branch"):
        merge_adapters(model)
    method = get_adapter_method("conv_adapter")
    assert method.size_knob == "bottleneck" and method.default_targets == ("conv",)


def test_adapter_file_round_trip_is_exact(tmp_path):
    model, x, _ = _injected("efficientnet")
    randomize_adapters(model)
    save_adapter(model, tmp_path / "conv_adapter.safetensors")
    fresh, _, _ = _injected("efficientnet")
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "conv_adapter.safetensors")
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("family", sorted(TARGETS))
def test_count_follows_the_formula(family):
    model, _, names = _injected(family)
    expected = sum(_per_layer_count(model.get_submodule(name).base_layer, BOTTLENECK) for name in names)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in adapter_parameters(model)}


def test_every_adapter_parameter_learns_and_nothing_else_trains():
    model, x, names = _injected("resnet")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # step 0 moves the zero-init up projection; then every factor has a gradient
        optimizer.zero_grad()
        model(x).square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        optimizer.step()
    assert len(grads) == 4 * len(names)
    dead = [n for n, g in grads.items() if g is None or g.abs().max() == 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_budget_chooses_the_bottleneck():
    model, _ = make_encoder("resnet")
    small = sum(p.numel() for p in adapter_parameters(_injected("resnet", bottleneck=2)[0]))
    large = sum(p.numel() for p in adapter_parameters(_injected("resnet", bottleneck=3)[0]))
    assert large > small
    chosen = match_budget(model, "conv_adapter", ["conv"], budget=large + (large - small) // 2)
    assert (chosen.knob, chosen.value, chosen.params) == ("bottleneck", 3, large)


def test_refusals():
    with pytest.raises(ValueError, match=r"'fc', a Linear; Conv-Adapter runs beside nn.Conv2d layers only"):
        inject_adapters(make_encoder("resnet")[0], "conv_adapter", ["fc"])

    class OwnForward(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(F.pad(x, (1, 1, 1, 1)))

    with pytest.raises(ValueError, match="with its own forward"):
        inject_adapters(nn.Sequential(OwnForward(3, 4, 3)), "conv_adapter", ["0"])
    with pytest.raises(ValueError, match="bottleneck"):
        ConvAdapterConfig(bottleneck=0)
    layer = ConvAdapterLayer(nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect"), ConvAdapterConfig(2))
    assert layer.adapter_dw.padding == "same" and layer.adapter_dw.padding_mode == "reflect"
