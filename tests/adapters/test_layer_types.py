"""Base layers that are not plain nn.Linear/nn.Conv2d: timm's StdConv2d and Eva's fused qkv with q/v biases."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import METHOD_OPTIONS, randomize_adapters
from timm.layers import StdConv2d
from torch import nn

from medpeft.adapters import adapter_layers, adapter_parameters, inject_adapters, merge_adapters

# Block 0 of stage 0: conv1 (1x1), conv2 (3x3), conv3 (1x1) and the downsample projection, all StdConv2d.
STD_CONV_TARGETS = ["stages.0.blocks.0.conv[1-3]", "stages.0.blocks.0.downsample.conv"]


def resnetv2() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=4).eval()


def stage0(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Stem and first stage only, where the adapters are: the whole network is slow on CPU."""
    return model.stages[0](model.stem(x))


def eva() -> nn.Module:
    """A two-block Eva whose attention calls ``F.linear(x, self.qkv.weight, cat(q_bias, k_bias, v_bias))``."""
    torch.manual_seed(0)
    model = timm.create_model("vit_medium_patch16_rope_reg1_gap_256", pretrained=False, img_size=64, depth=2).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:
            block.gamma_1.fill_(1.0)  # layer scale 1e-5 would hide any change inside the blocks
            block.gamma_2.fill_(1.0)
            block.attn.q_bias.normal_(generator=generator)
            block.attn.v_bias.normal_(generator=generator)
    return model


def test_std_conv_identity_at_init_and_merge(method):
    model, x = resnetv2(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = stage0(model, x)
    names = inject_adapters(model, method, STD_CONV_TARGETS, **METHOD_OPTIONS[method])
    assert len(names) == 4 and all(isinstance(layer.base_layer, StdConv2d) for layer in adapter_layers(model).values())
    with torch.no_grad():
        assert (stage0(model, x) - expected).abs().max() <= 1e-5
    randomize_adapters(model)
    with torch.no_grad():
        unmerged = stage0(model, x)
        assert (unmerged - expected).abs().max() > 1e-3
        # Each layer is StdConv2d(x; W0 + delta): standardisation applies to the adapted weight.
        layer = adapter_layers(model)["stages.0.blocks.0.conv2"]
        reference = copy.deepcopy(layer.base_layer)
        reference.weight.copy_(layer.base_layer.weight + layer.delta_weight())
        probe = torch.randn(1, 64, 8, 8)
        torch.testing.assert_close(layer(probe), reference(probe), rtol=1e-5, atol=1e-5)
        merge_adapters(model)
        assert (stage0(model, x) - unmerged).abs().max() <= 1e-4


def test_lora_dropout_refused_on_std_conv():
    with pytest.raises(ValueError, match="dropout.*StdConv2d"):
        inject_adapters(resnetv2(), "lora", STD_CONV_TARGETS, rank=2, dropout=0.1)


def test_eva_fused_qkv_with_separate_biases(method):
    model, x = eva(), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_features(x)
    names = inject_adapters(model, method, ["attn"], **METHOD_OPTIONS[method])
    assert names == [f"blocks.{b}.attn.{layer}" for b in range(2) for layer in ("proj", "qkv")]
    with torch.no_grad():
        assert (model.forward_features(x) - expected).abs().max() <= 1e-5
    randomize_adapters(model)
    out = model.forward_features(x)
    assert (out - expected).abs().max() > 1e-3
    out.square().mean().backward()
    qkv = adapter_layers(model)["blocks.0.attn.qkv"]
    qkv_parameters = adapter_parameters(model) if method == "tcurlora" else list(qkv.parameters())
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in qkv_parameters if p.requires_grad)
    with torch.no_grad():
        merge_adapters(model)
        torch.testing.assert_close(model.forward_features(x), out.detach(), rtol=1e-4, atol=1e-4)
