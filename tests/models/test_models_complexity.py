"""count_parameters and measure_gflops: known answers on tiny models, consistent splits on a Segmenter."""

from __future__ import annotations

import sys
import types

import pytest
from torch import nn

from medpeft.models import build_segmenter, count_parameters, measure_gflops


def test_gflops_of_a_conv_counts_multiply_add_as_two():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    expected = 2 * 3 * 8 * 3 * 3 * 16 * 16 / 1e9  # per image; bias not counted
    assert measure_gflops(conv, input_shape=(4, 3, 16, 16)) == pytest.approx(expected)


def test_gflops_of_a_linear_layer():
    linear = nn.Linear(32, 10)
    assert measure_gflops(linear, input_shape=(5, 32)) == pytest.approx(2 * 32 * 10 / 1e9)


def test_gflops_of_a_segmenter_is_per_image_and_keeps_training_mode():
    net = build_segmenter("resnet18", in_channels=1, img_size=32)
    one = measure_gflops(net)  # default input: one 1 x 32 x 32 image
    assert one > 0
    assert measure_gflops(net, input_shape=(2, 1, 32, 32)) == pytest.approx(one)
    assert net.training


@pytest.fixture(scope="module")
def vit_net() -> nn.Module:
    return build_segmenter("vit_tiny_patch16_224", in_channels=1, num_classes=2, img_size=32)


def test_counts_of_a_full_network(vit_net):
    counts = count_parameters(vit_net)
    total = sum(p.numel() for p in vit_net.parameters())
    assert counts["total_params"] == counts["trainable_params"] == total
    assert (
        counts["encoder_params"]
        == counts["encoder_trainable_params"]
        == sum(p.numel() for p in vit_net.encoder.parameters())
    )
    assert counts["encoder_params"] + counts["decoder_params"] == total


def test_adapter_parameters_are_split_out(vit_net, monkeypatch):
    """With adapters (stood in for by a fake adapters package), the encoder count excludes them."""
    qkv = vit_net.encoder.model.blocks[0].attn.qkv
    adapter = nn.Linear(qkv.in_features, 4, bias=False)  # 4 * 192 parameters
    vit_net.encoder.add_module("fake_adapter", adapter)
    fake = types.ModuleType("medpeft.adapters")
    fake.adapter_parameters = lambda module: [adapter.weight]
    monkeypatch.setitem(sys.modules, "medpeft.adapters", fake)
    vit_net.encoder.requires_grad_(False)
    adapter.requires_grad_(True)
    try:
        counts = count_parameters(vit_net)
    finally:
        del vit_net.encoder.fake_adapter
        vit_net.encoder.requires_grad_(True)

    assert counts["adapter_params"] == 4 * 192
    assert counts["encoder_trainable_params"] == 0
    assert counts["trainable_params"] == counts["adapter_params"] + counts["decoder_params"]
    assert counts["total_params"] == counts["encoder_params"] + counts["adapter_params"] + counts["decoder_params"]
