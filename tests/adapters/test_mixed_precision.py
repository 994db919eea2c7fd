"""Adapter deltas under autocast: built in float32, so exact at init and as accurate as without autocast."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from medpeft.adapters import LoRAConfig, LoRALayer, TRMConfig, TRMLayer, inject_adapters, tcurlora_groups

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}
LAYERS = {"linear": lambda: nn.Linear(768, 768), "conv": lambda: nn.Conv2d(96, 64, kernel_size=3, padding=1)}


def perturbed(module: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return module


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference.double()).norm() / reference.double().norm()).item()


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_trm_delta_is_exactly_zero_at_init_under_autocast(layer, order, rank):
    torch.manual_seed(0)
    trm = TRMLayer(LAYERS[layer](), TRMConfig(rank=rank, order=order))
    with torch.autocast(**BF16):
        delta = trm.delta_weight()
    assert delta.dtype == torch.float32
    assert torch.count_nonzero(delta) == 0  # also for rank 3, where 1 / 3 is inexact


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_trm_delta_under_autocast_is_the_float32_delta(layer):
    torch.manual_seed(0)
    trm = perturbed(TRMLayer(LAYERS[layer](), TRMConfig(rank=3, order=3)))
    expected = trm.delta_weight()
    with torch.autocast(**BF16):
        delta = trm.delta_weight()
    assert relative_error(delta, expected) <= 1e-6  # bfloat16 einsums gave 30-40 %
    # T - I on the cores agrees with the dense T - I computed in float64.
    weight = trm.base_layer.weight.double()
    t_minus_identity = trm.transform_matrix().double() - torch.eye(trm.in_features, dtype=torch.float64)
    transformed = torch.einsum("oihw,ij->ojhw", weight, t_minus_identity) if trm.is_conv else weight @ t_minus_identity
    reference = transformed + trm.residual_matrix().double().reshape(weight.shape)
    assert relative_error(expected, reference) <= 1e-5


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_trm_output_under_autocast_matches_float32(layer):
    torch.manual_seed(0)
    trm = perturbed(TRMLayer(LAYERS[layer](), TRMConfig(rank=2, order=3)))
    x = torch.randn(4, 768) if layer == "linear" else torch.randn(2, 96, 8, 8)
    with torch.no_grad():
        expected = trm(x)
        with torch.autocast(**BF16):
            out = trm(x)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, expected) <= 2e-2  # bfloat16 has an 8-bit mantissa


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_lora_delta_under_autocast_is_the_float32_delta(layer):
    torch.manual_seed(0)
    lora = LoRALayer(LAYERS[layer](), LoRAConfig(rank=4))
    with torch.autocast(**BF16):
        assert torch.count_nonzero(lora.delta_weight()) == 0
    perturbed(lora)
    expected = lora.delta_weight()
    with torch.autocast(**BF16):
        delta = lora.delta_weight()
    assert delta.dtype == torch.float32 and relative_error(delta, expected) <= 1e-6


def test_tcurlora_delta_under_autocast_is_the_float32_delta():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3)
    inject_adapters(model, "tcurlora", ["attn", "mlp"], rank=2)
    groups = tcurlora_groups(model).values()
    with torch.autocast(**BF16):
        assert all(torch.count_nonzero(group.compute_delta()) == 0 for group in groups)
    perturbed(model)
    for group in groups:
        expected = group.compute_delta()
        with torch.autocast(**BF16):
            delta = group.compute_delta()
        assert delta.dtype == torch.float32 and relative_error(delta, expected) <= 1e-6
