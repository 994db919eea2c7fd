"""TimmEncoder: feature maps agree with the reported channels/strides, NCHW, and module names adapters target."""

from __future__ import annotations

import pytest
import torch

from medpeft.models import TimmEncoder
from medpeft.models.families import UnsupportedEncoderError
from medpeft.models.families.swin import swin_window_size

CASES = [
    # (name, in_channels, expected out_channels, expected reductions)
    ("vit_tiny_patch16_224", 1, [192] * 4, [16] * 4),
    ("swin_tiny_patch4_window7_224", 3, [96, 192, 384, 768], [4, 8, 16, 32]),
    ("resnet18", 1, [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
]


@pytest.mark.parametrize("name, in_channels, channels, reductions", CASES)
def test_features_match_reported_channels_and_strides(name, in_channels, channels, reductions):
    size = 64
    encoder = TimmEncoder(name, in_channels=in_channels, img_size=size)
    assert encoder.out_channels == channels
    assert encoder.reductions == reductions
    assert len(encoder.mean) == len(encoder.std) == in_channels

    features = encoder(torch.rand(2, in_channels, size, size))

    # NCHW: channel axis 1, spatial size = input / stride (Swin's NHWC must have been permuted)
    assert [tuple(f.shape) for f in features] == [(2, c, size // r, size // r) for c, r in zip(channels, reductions)]


def test_vit_default_out_indices_and_module_names():
    encoder = TimmEncoder("vit_tiny_patch16_224", in_channels=3, img_size=32)
    names = dict(encoder.named_modules())
    assert encoder.out_indices == (2, 5, 8, 11)  # 4 evenly spaced blocks ending at the last
    assert "model.blocks.3.attn.qkv" in names  # no extra "model." level from timm's FeatureGetterNet
    assert encoder.mean == [0.5, 0.5, 0.5]


def test_vit_custom_out_indices():
    encoder = TimmEncoder("vit_tiny_patch16_224", in_channels=3, img_size=32, out_indices=(1, 3))
    assert encoder.out_indices == (1, 3)
    assert len(encoder(torch.rand(1, 3, 32, 32))) == 2


def test_single_channel_statistics_are_the_rgb_average():
    encoder = TimmEncoder("resnet18", in_channels=1, img_size=32)
    assert encoder.mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert encoder.std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])


@pytest.mark.parametrize("img_size, window", [(224, 7), (128, 8), (64, 4), (256, 8)])
def test_swin_window_tiles_the_grid(img_size, window):
    assert swin_window_size("swin_tiny_patch4_window7_224", img_size) == window
    assert (img_size // 4 // 4) % window == 0  # third stage's grid, hence the first two, need no padding


def test_unknown_timm_name_is_refused_with_similar_names():
    with pytest.raises(UnsupportedEncoderError, match=r"timm has no model named 'convnext_tinyy'.*convnext_tiny"):
        TimmEncoder("convnext_tinyy", in_channels=3, img_size=64)


def test_backbone_no_decoder_fits_is_refused_when_built_with_the_reason():
    """CrossViT's two branches return maps at strides 12 and 17: refused when the encoder is built (before any
    training), naming the model and the strides."""
    with pytest.raises(UnsupportedEncoderError, match=r"'crossvit_tiny_240' cannot be used: .*strides \[12, 17\]"):
        TimmEncoder("crossvit_tiny_240", in_channels=3, img_size=240)


def test_backbone_that_cannot_run_at_the_size_is_refused_with_the_reason():
    """Inception-v3's stem cannot run on 32 px images: refused at build time with timm's error, not mid-training."""
    with pytest.raises(UnsupportedEncoderError, match=r"'inception_v3' cannot be used at image size 32"):
        TimmEncoder("inception_v3", in_channels=3, img_size=32)


def test_generic_family_builds_fixed_size_transformers_for_the_image_size():
    """MLP-Mixer (no family of its own) takes img_size; its equal-stride maps get four evenly spaced blocks."""
    encoder = TimmEncoder("mixer_s16_224", in_channels=1, img_size=64)
    assert encoder.family.name == "generic" and encoder.out_indices == (1, 3, 5, 7)
    assert [tuple(f.shape) for f in encoder(torch.rand(2, 1, 64, 64))] == [(2, 512, 4, 4)] * 4


def test_random_resnet_keeps_residual_branches_on() -> None:
    """timm zero-inits each block's last BatchNorm; ours must not, or a random ResNet's blocks start switched off
    and an adapter on their convs gets no gradient (BUSI from scratch lost 0.07 validation Dice to it)."""
    from medpeft.adapters import inject_adapters, tcurlora_groups

    encoder = TimmEncoder("resnet18", in_channels=1, img_size=64)
    last_norms = [m.bn2.weight for m in encoder.model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(last_norms) == 8 and all(torch.equal(w, torch.ones_like(w)) for w in last_norms)
    inject_adapters(encoder, method="tcurlora", targets=["conv"], rank=1)
    sum(f.square().mean() for f in encoder(torch.rand(2, 1, 64, 64))).backward()
    assert all(group.tcur_dU_real.grad.abs().sum() > 0 for group in tcurlora_groups(encoder).values())


def test_sam_deepest_map_is_the_neck_output() -> None:
    """SAM's deepest map is its image embedding: the neck after the last block, as timm's plain SAM computes it
    (timm's features_only wrapper would drop the neck); the shallower maps are the blocks' 768-channel tokens."""
    import timm

    encoder = TimmEncoder("samvit_base_patch16", in_channels=3, img_size=64).eval()
    plain = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, img_size=64).eval()
    plain.load_state_dict(encoder.model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = encoder(x)
        embedding = plain.forward_features(x)
    assert encoder.out_channels == [768, 768, 768, 256] and encoder.out_indices == (2, 5, 8, 11)
    torch.testing.assert_close(features[-1], embedding, rtol=0, atol=0)
    assert [tuple(f.shape) for f in features[:-1]] == [(1, 768, 4, 4)] * 3


def test_patch14_maps_are_decoded_at_stride_16() -> None:
    """DINOv2's 8 x 8 patch grid at 112 px is resampled to the 7 x 7 grid UNETR's four x2 stages expect; an image
    size UNETR cannot reach is refused when the network is built, naming both strides."""
    from medpeft.models import build_segmenter

    net = build_segmenter("vit_small_patch14_reg4_dinov2", img_size=112, num_classes=3)
    assert net.encoder.reductions == [14] * 4 and net.decoder.grid_stride == 16
    seen = []
    net.decoder.stages[0].register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    assert tuple(net(torch.rand(1, 3, 112, 112)).shape) == (1, 3, 112, 112)
    assert seen == [(7, 7)]  # the bottleneck enters the first x2 stage on the stride-16 grid, not the 8 x 8 tokens
    with pytest.raises(ValueError, match=r"feature stride 14, decoded at stride 16.*multiple of 16; got 126"):
        build_segmenter("vit_small_patch14_reg4_dinov2", img_size=126)


def test_efficientnet_blocks_presets_and_depthwise_refusal() -> None:
    """EfficientNet's blocks.<stage>.<k> count one by one (16 on Lite-0), ``conv`` takes only its pointwise
    convolutions, ``all-conv`` skips the depthwise ones, and a pattern that names a depthwise conv is refused by name."""
    from medpeft.adapters import inject_adapters
    from medpeft.adapters.inject import block_indices

    encoder = TimmEncoder("tf_efficientnet_lite0", in_channels=3, img_size=32)
    assert len(block_indices(encoder)) == 16
    names = inject_adapters(encoder, "lora", ["conv"], blocks=[0, -1], rank=2)
    assert names == ["model.blocks.0.0.conv_pw", "model.blocks.6.0.conv_pw", "model.blocks.6.0.conv_pwl"]

    depthwise = TimmEncoder("tf_efficientnet_lite0", in_channels=3, img_size=32)
    adapted = inject_adapters(depthwise, "lora", ["all-conv"], rank=2)
    assert adapted and not any(name.endswith("conv_dw") for name in adapted)
    with pytest.raises(
        ValueError, match=r"'model.blocks.1.0.conv_dw', a grouped convolution \(groups=96, depthwise\)"
    ):
        inject_adapters(TimmEncoder("tf_efficientnet_lite0", 3, 32), "lora", ["blocks.1.0.conv_dw"], rank=2)


def test_readme_family_table_is_the_generated_one() -> None:
    """README.md's encoder table is medpeft.models.families.table's output, so a family's docs cannot drift."""
    from pathlib import Path

    from medpeft.models.families.table import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme
