"""The models package together with medpeft.adapters: parameter split and export of a merged encoder."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from medpeft.models import (
    TimmEncoder,
    build_segmenter,
    count_parameters,
    encoder_state_dict_for_timm,
    load_pretrained_encoder,
)

adapters = pytest.importorskip("medpeft.adapters")


def test_lora_counts_and_merged_export_reloads(tmp_path):
    net = build_segmenter("vit_tiny_patch16_224", in_channels=1, img_size=32)
    names = adapters.inject_adapters(net.encoder, method="lora", targets=["blocks.*.attn.qkv"], rank=2)
    assert names[0] == "model.blocks.0.attn.qkv"
    with torch.no_grad():  # non-zero adapter update, so that merging changes the weights
        for p in adapters.adapter_parameters(net):
            p.normal_(std=0.1)

    counts = count_parameters(net)
    assert counts["adapter_params"] == 12 * 2 * (192 + 3 * 192)  # A: r x in, B: out x r, per qkv
    assert counts["encoder_trainable_params"] == 0
    assert counts["total_params"] == counts["encoder_params"] + counts["adapter_params"] + counts["decoder_params"]

    net.eval()
    x = torch.rand(2, 1, 32, 32)
    expected = net.encoder(x)
    adapters.merge_adapters(net.encoder)
    save_file(encoder_state_dict_for_timm(net.encoder), str(tmp_path / "merged.safetensors"))

    fresh = TimmEncoder("vit_tiny_patch16_224", in_channels=1, img_size=32).eval()
    assert load_pretrained_encoder(fresh, tmp_path / "merged.safetensors")["missing_keys"] == []
    for a, b in zip(fresh(x), expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
