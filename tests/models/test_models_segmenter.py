"""build_segmenter / Segmenter: logits at the input resolution for every family, decoder choice and size."""

from __future__ import annotations

import pytest
import torch

from medpeft.models import (
    LinearDecoder,
    Segmenter,
    TimmEncoder,
    UNetDecoder,
    UNETRDecoder,
    build_segmenter,
    count_parameters,
)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("encoder", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "resnet18"])
def test_logits_have_input_resolution(encoder, in_channels):
    net = build_segmenter(encoder=encoder, in_channels=in_channels, num_classes=3, img_size=64)
    assert isinstance(net, Segmenter) and isinstance(net.encoder, TimmEncoder)

    logits = net(torch.rand(2, in_channels, 64, 64))

    assert logits.shape == (2, 3, 64, 64)
    assert torch.isfinite(logits).all()


def test_resnet_takes_non_square_sizes_not_divisible_by_32():
    net = build_segmenter(encoder="resnet18", in_channels=1, num_classes=2, img_size=48)
    assert net(torch.rand(1, 1, 40, 72)).shape == (1, 2, 40, 72)


def test_auto_decoder_follows_family():
    assert isinstance(build_segmenter("vit_tiny_patch16_224", img_size=32).decoder, UNETRDecoder)
    assert isinstance(build_segmenter("resnet18", img_size=32).decoder, UNetDecoder)


def test_vit_tiny_decoder_is_small():
    counts = count_parameters(build_segmenter("vit_tiny_patch16_224", num_classes=2, img_size=128))
    assert counts["decoder_params"] < 1_500_000


def test_decoder_channels_are_used():
    net = build_segmenter("resnet18", img_size=32, decoder_channels=(32, 16, 8, 8, 4))
    assert net.decoder.head.in_channels == 4
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 2, 32, 32)


def test_normalisation_uses_encoder_statistics():
    net = build_segmenter("vit_tiny_patch16_224", in_channels=3, img_size=32)
    x = torch.rand(1, 3, 32, 32)
    seen = {}
    net.encoder.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    net(x)
    torch.testing.assert_close(seen["x"], (x - 0.5) / 0.5)  # vit_tiny was pretrained with mean = std = 0.5


def test_invalid_decoders_raise():
    with pytest.raises(ValueError, match="auto.*unetr.*unet.*linear"):
        build_segmenter("resnet18", decoder="fpn", img_size=32)
    with pytest.raises(ValueError, match="equal-stride"):
        build_segmenter("resnet18", decoder="unetr", img_size=32)
    with pytest.raises(ValueError, match="distinct strides"):
        build_segmenter("vit_tiny_patch16_224", decoder="unet", img_size=32)


@pytest.mark.parametrize("encoder", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "resnet18"])
def test_linear_decoder_fits_every_family(encoder):
    net = build_segmenter(encoder, decoder="linear", num_classes=3, img_size=64)
    assert isinstance(net.decoder, LinearDecoder)
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    assert count_parameters(net)["decoder_params"] < 150_000


def test_linear_decoder_is_per_pixel_and_never_reads_the_image():
    decoder = LinearDecoder([8, 16], num_classes=2, decoder_channels=[4]).eval()
    features = [torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)]
    logits = decoder(torch.zeros(1, 3, 32, 32), features)
    torch.testing.assert_close(logits, decoder(torch.rand(1, 3, 32, 32), features))  # only the image's size counts
    # per-pixel: constant features give constant logits, equal to the 1x1 layers applied to the one feature vector
    constant = [f[:, :, :1, :1].expand_as(f) for f in features]
    flat = decoder(torch.zeros(1, 3, 32, 32), constant)
    vector = torch.cat([p(f[:, :, :1, :1]) for p, f in zip(decoder.projections, features)], dim=1)
    torch.testing.assert_close(flat, decoder.head(decoder.fuse(vector)).expand_as(flat))
    with pytest.raises(ValueError, match="one width"):
        LinearDecoder([8], num_classes=2, decoder_channels=[4, 4])
