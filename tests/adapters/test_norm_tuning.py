"""Normalisation tuning: only the norm layers' affine parameters train, by a hand-written reference and on encoders."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_encoder, randomize_adapters
from timm.layers import BatchNormAct2d, LayerNorm2d, RmsNorm
from torch import nn

import medpeft.adapters.norm_tuning  # noqa: F401  (registers "norm")
from medpeft.adapters import (
    adapter_parameters,
    get_adapter_method,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
)
from medpeft.adapters.inject import trained_base_parameters


class TinyNet(nn.Module):
    """One of each norm: BatchNorm, GroupNorm, timm's LayerNorm2d, LayerNorm, RmsNorm (weight only), and one
    LayerNorm without affine parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln2d = LayerNorm2d(8)
        self.lin = nn.Linear(8, 6)
        self.ln = nn.LayerNorm(6)
        self.rms = RmsNorm(6)
        self.plain = nn.LayerNorm(6, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, H, W] -> [B, 6]
        h = self.ln2d(self.gn(self.bn(self.conv(x)))).mean(dim=(2, 3))
        return self.plain(self.rms(self.ln(self.lin(h))))


def _randomized_tiny() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    base = TinyNet().eval()
    with torch.no_grad():  # statistics away from (0, 1), so that the reference must use them
        base.bn.running_mean.normal_()
        base.bn.running_var.uniform_(0.5, 2.0)
    model = copy.deepcopy(base)
    inject_adapters(model, "norm", ["all"])
    randomize_adapters(model, scale=0.5)
    return base, model


def test_matches_hand_written_reference():
    base, model = _randomized_tiny()
    p = dict(model.named_parameters())
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        h = F.conv2d(x, base.conv.weight, base.conv.bias, padding=1)
        mean, var = base.bn.running_mean[:, None, None], base.bn.running_var[:, None, None]
        h = (h - mean) / (var + 1e-5).sqrt() * p["bn.weight"][:, None, None] + p["bn.bias"][:, None, None]
        g = h.reshape(2, 2, -1)
        g = ((g - g.mean(-1, keepdim=True)) / (g.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()).reshape(h.shape)
        h = g * p["gn.weight"][:, None, None] + p["gn.bias"][:, None, None]
        c = (h - h.mean(1, keepdim=True)) / (h.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt()
        h = (c * p["ln2d.weight"][:, None, None] + p["ln2d.bias"][:, None, None]).mean(dim=(2, 3))
        h = h @ base.lin.weight.T + base.lin.bias
        h = (h - h.mean(-1, keepdim=True)) / (h.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        h = h * p["ln.weight"] + p["ln.bias"]
        h = h / (h.square().mean(-1, keepdim=True) + 1e-6).sqrt() * p["rms.weight"]
        expected = (h - h.mean(-1, keepdim=True)) / (h.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        out = model(x)
        assert (out - base(x)).abs().max() > 1e-2
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_counts_and_what_trains_on_the_tiny_net():
    _, model = _randomized_tiny()
    assert set(trained_base_parameters(model)) == {
        f"{n}.{k}" for n in ("bn", "gn", "ln2d", "ln") for k in ("weight", "bias")
    } | {"rms.weight"}
    assert sum(p.numel() for p in adapter_parameters(model)) == 2 * (8 + 8 + 8 + 6) + 6
    method = get_adapter_method("norm")
    assert method.size_knob is None and method.merge_refusal is None and method.adapt_norm
    assert method.default_targets == ("all",)


@pytest.mark.parametrize("family, norm_type", [("vit", nn.LayerNorm), ("efficientnet", BatchNormAct2d)])
def test_encoders_train_two_per_channel_of_every_norm(family, norm_type):
    base, x = make_encoder(family)
    model = copy.deepcopy(base)
    names = inject_adapters(model, "norm", ["all"])
    norms = {n: m for n, m in model.named_modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d))}
    assert names == sorted(norms) and all(isinstance(m, norm_type) for m in norms.values())
    channels = sum(m.normalized_shape[0] if isinstance(m, nn.LayerNorm) else m.num_features for m in norms.values())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * channels
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trained_base_parameters(model))
    with torch.no_grad():
        assert torch.equal(model(x), base(x))  # nothing is wrapped
    model(x).square().mean().backward()
    trained = trained_base_parameters(model)
    dead = [n for n, p in trained.items() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, f"affine parameters without gradient: {dead}"
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trained)


def test_merge_is_a_no_op_and_the_adapter_file_holds_the_affine_parameters(tmp_path):
    model, x = make_encoder("efficientnet")
    inject_adapters(model, "norm", ["all"])
    randomize_adapters(model, scale=0.3)
    with torch.no_grad():
        out = model(x)
        merge_adapters(model)
        assert torch.equal(model(x), out)
    save_adapter(model, tmp_path / "norm.safetensors")
    fresh, _ = make_encoder("efficientnet")
    inject_adapters(fresh, "norm", ["all"])
    frozen = {n: p.clone() for n, p in fresh.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        assert not torch.equal(fresh(x), out)
        load_adapter(fresh, tmp_path / "norm.safetensors")
        assert torch.equal(fresh(x), out)
    trained = dict(model.named_parameters())
    for name, parameter in trained_base_parameters(fresh).items():
        assert torch.equal(parameter, trained[name])
    for name, parameter in fresh.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name  # the frozen rest untouched


def test_non_norm_and_non_affine_modules_are_refused():
    model = TinyNet()
    with pytest.raises(ValueError, match=r"'lin', a Linear; normalisation tuning trains"):
        inject_adapters(model, "norm", ["lin", "ln"])
    with pytest.raises(ValueError, match=r"'plain', a LayerNorm without affine parameters"):
        inject_adapters(model, "norm", ["plain"])
    assert inject_adapters(model, "norm", ["*ln*"]) == ["ln", "ln2d"]
    assert set(trained_base_parameters(model)) == {"ln.weight", "ln.bias", "ln2d.weight", "ln2d.bias"}
