"""Target selection, presets, block indices and the errors of inject_adapters."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from medpeft.adapters import AdapterLayer, inject_adapters
from medpeft.adapters.inject import block_indices


def vit(depth: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=depth)


def test_returns_sorted_names_and_presets_expand():
    model = vit()
    names = inject_adapters(model, "lora", ["mlp", "attn"], rank=2)
    assert names == sorted(
        f"blocks.{b}.{layer}" for b in range(3) for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    )
    assert all(isinstance(model.get_submodule(n), AdapterLayer) for n in names)
    assert isinstance(model.get_submodule("blocks.0.attn.qkv").base_layer, nn.Linear)


def test_glob_matches_as_suffix_inside_features_only_wrapper():
    torch.manual_seed(0)
    encoder = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3, features_only=True)
    names = inject_adapters(encoder, "trm", ["blocks.*.attn.qkv"], rank=1)
    assert names == [f"model.blocks.{b}.attn.qkv" for b in range(3)]


def test_regex_targets():
    names = inject_adapters(vit(), "lora", ["re:blocks\\.[02]\\.mlp\\.fc1"], rank=1)
    assert names == ["blocks.0.mlp.fc1", "blocks.2.mlp.fc1"]


def test_block_indices_across_families():
    names = inject_adapters(vit(), "lora", ["qkv"], blocks=[0, -1], rank=1)
    assert names == ["blocks.0.attn.qkv", "blocks.2.attn.qkv"]
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4)
    assert len(block_indices(swin)) == 12  # 2 + 2 + 6 + 2 blocks numbered across stages
    assert inject_adapters(swin, "lora", ["qkv"], blocks=[4], rank=1) == ["layers.2.blocks.0.attn.qkv"]
    resnet = timm.create_model("resnet18", pretrained=False)
    assert inject_adapters(resnet, "lora", ["conv"], blocks=[7], rank=1) == ["layer4.1.conv1", "layer4.1.conv2"]


def test_all_linear_skips_the_classifier_head():
    names = inject_adapters(vit(depth=1), "lora", ["all-linear"], rank=1)
    assert "head" not in names and "blocks.0.attn.qkv" in names and len(names) == 4


def test_nothing_matched_lists_candidates():
    with pytest.raises(ValueError, match=r"matched no module.*blocks\.0\.attn\.qkv"):
        inject_adapters(vit(), "lora", ["decoder.*"], rank=1)


def test_unknown_method_and_option():
    with pytest.raises(ValueError, match=r"unknown adapter method 'lorra'.*lora"):
        inject_adapters(vit(), "lorra", ["attn"])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rnak'\].*rank"):
        inject_adapters(vit(), "lora", ["attn"], rnak=4)
    with pytest.raises(ValueError, match="rank must be a positive int"):
        inject_adapters(vit(), "trm", ["attn"], rank=0)
    with pytest.raises(ValueError, match="out of range"):
        inject_adapters(vit(), "lora", ["attn"], blocks=[3], rank=1)


def test_non_layer_match_and_double_injection_refused():
    with pytest.raises(ValueError, match="Attention.*nn.Linear"):
        inject_adapters(vit(), "lora", ["blocks.0.attn"], rank=1)
    model = vit()
    inject_adapters(model, "lora", ["attn"], rank=1)
    with pytest.raises(ValueError, match="already has adapters"):
        inject_adapters(model, "lora", ["mlp"], rank=1)


def test_transformer_presets_adapt_only_the_blocks_own_layers():
    torch.manual_seed(0)
    relpos = timm.create_model("vit_relpos_small_patch16_224", pretrained=False, img_size=64, depth=2)
    assert "blocks.0.attn.rel_pos.mlp.fc1" in dict(relpos.named_modules())  # what a "*mlp.fc1" glob also caught
    names = inject_adapters(relpos, "lora", ["mlp", "attn"], rank=1)
    layers = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    assert names == sorted(f"blocks.{b}.{layer}" for b in range(2) for layer in layers)
    map_pool = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, global_pool="map")
    # The attention-pooling head has an mlp.fc1 too; it is no block's.
    assert inject_adapters(map_pool, "lora", ["mlp"], rank=1) == ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]


@pytest.mark.parametrize(
    "name, kwargs, blocks",
    [
        ("vit_tiny_patch16_224", {"img_size": 32, "depth": 3}, ["model.blocks.0", "model.blocks.1", "model.blocks.2"]),
        (
            "swin_tiny_patch4_window7_224",
            {"img_size": 64, "window_size": 4, "depths": (1, 1, 1, 1)},
            [f"layers_{stage}.blocks.0" for stage in range(4)],
        ),
    ],
)
def test_presets_inside_features_only_wrappers(name, kwargs, blocks):
    torch.manual_seed(0)
    encoder = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
    names = inject_adapters(encoder, "lora", ["attn", "mlp"], rank=1)
    layers = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    assert names == sorted(f"{block}.{layer}" for block in blocks for layer in layers)


def test_injection_is_all_or_nothing():
    """A layer refused halfway (LoRA dropout on a conv subclass) leaves the model exactly as it was."""
    from timm.layers import StdConv2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), StdConv2d(4, 4, 3))
    before = list(model)
    with pytest.raises(ValueError, match="dropout"):
        inject_adapters(model, "lora", ["*"], rank=1, dropout=0.1)
    assert list(model) == before and not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    inject_adapters(model, "lora", ["*"], rank=1)  # the untouched model still takes adapters
