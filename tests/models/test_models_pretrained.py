"""load_pretrained_encoder / encoder_state_dict_for_timm: hub failure, timm-compatible files, round trip."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from medpeft.models import PretrainedWeightsError, TimmEncoder, encoder_state_dict_for_timm, load_pretrained_encoder
from medpeft.models.families.swin import swin_window_size


def _plain_state_dict(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """A random plain timm model's state dict: what a timm-compatible weights file holds."""
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in timm.create_model(name, **kwargs).state_dict().items()}


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory) -> tuple:
    state = _plain_state_dict("resnet18")
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file(state, str(path))
    return path, state


def test_offline_hub_raises_one_line_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = TimmEncoder("resnet18", in_channels=3, img_size=32)
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError) as info:
        load_pretrained_encoder(encoder, True)
    message = str(info.value)
    assert time.perf_counter() - start < 30  # no minute of hub-client retries
    assert "\n" not in message
    assert "timm/resnet18" in message and "unreachable" in message
    assert "model.pretrained: /path/to/weights.safetensors" in message and "pretrained: false" in message
    assert info.value.__cause__ is not None


def test_false_loads_nothing():
    encoder = TimmEncoder("resnet18", in_channels=3, img_size=32)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert load_pretrained_encoder(encoder, False) == {"missing_keys": [], "unexpected_keys": [], "loaded": []}
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_resnet_safetensors_loads_every_weight(resnet_file):
    path, state = resnet_file
    encoder = TimmEncoder("resnet18", in_channels=3, img_size=32)

    report = load_pretrained_encoder(encoder, path)

    assert report["missing_keys"] == [] and report["unexpected_keys"] == []  # fc.* is dropped silently
    assert len(report["loaded"]) == len(encoder.state_dict())
    exported = encoder_state_dict_for_timm(encoder)
    assert exported.keys() == state.keys() - {"fc.weight", "fc.bias"}
    for key, value in exported.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_vit_safetensors_loads_every_weight(tmp_path):
    state = _plain_state_dict("vit_tiny_patch16_224", img_size=32)
    save_file(state, str(tmp_path / "vit.safetensors"))
    encoder = TimmEncoder("vit_tiny_patch16_224", in_channels=3, img_size=32)

    report = load_pretrained_encoder(encoder, tmp_path / "vit.safetensors")

    assert report["missing_keys"] == [] and "model.blocks.0.attn.qkv.weight" in report["loaded"]
    for key, value in encoder_state_dict_for_timm(encoder).items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_vit_file_at_224_resamples_position_embedding_for_64(tmp_path):
    state = _plain_state_dict("vit_tiny_patch16_224")  # pos_embed [1, 1 + 14 * 14, 192]
    save_file(state, str(tmp_path / "vit224.safetensors"))
    encoder = TimmEncoder("vit_tiny_patch16_224", in_channels=3, img_size=64)

    report = load_pretrained_encoder(encoder, tmp_path / "vit224.safetensors")

    pos_embed = encoder.model.pos_embed
    assert report["missing_keys"] == [] and pos_embed.shape == (1, 1 + 4 * 4, 192)
    torch.testing.assert_close(pos_embed[:, :1], state["pos_embed"][:, :1])  # class token is not resampled
    torch.testing.assert_close(encoder.model.blocks[5].mlp.fc1.weight, state["blocks.5.mlp.fc1.weight"])


def test_swin_file_at_224_resizes_bias_tables_for_64(tmp_path):
    state = _plain_state_dict("swin_tiny_patch4_window7_224")
    save_file(state, str(tmp_path / "swin.safetensors"))
    encoder = TimmEncoder("swin_tiny_patch4_window7_224", in_channels=3, img_size=64)

    report = load_pretrained_encoder(encoder, tmp_path / "swin.safetensors")

    window = swin_window_size("swin_tiny_patch4_window7_224", 64)
    table = encoder.model.layers_0.blocks[0].attn.relative_position_bias_table
    assert report["missing_keys"] == [] and table.shape == ((2 * window - 1) ** 2, 3)
    fc2 = encoder.model.layers_2.blocks[1].mlp.fc2.weight
    torch.testing.assert_close(fc2, state["layers.2.blocks.1.mlp.fc2.weight"])


def test_rgb_file_into_single_channel_encoder_sums_the_stem(resnet_file):
    path, state = resnet_file
    encoder = TimmEncoder("resnet18", in_channels=1, img_size=32)
    load_pretrained_encoder(encoder, path)
    torch.testing.assert_close(encoder.model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_pth_checkpoint_with_state_dict_wrapper_loads(tmp_path, resnet_file):
    _, state = resnet_file
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    encoder = TimmEncoder("resnet18", in_channels=3, img_size=32)
    load_pretrained_encoder(encoder, str(tmp_path / "ckpt.pth"))
    torch.testing.assert_close(encoder.model.layer3[0].conv2.weight, state["layer3.0.conv2.weight"])


class _NotATensor:
    """A pickled object that weights_only=True must refuse to unpickle."""


def test_pth_is_read_weights_only(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1), "evil": _NotATensor()}, tmp_path / "unsafe.pth")
    encoder = TimmEncoder("resnet18", in_channels=3, img_size=32)
    with pytest.raises(PretrainedWeightsError, match="unsafe.pth"):
        load_pretrained_encoder(encoder, tmp_path / "unsafe.pth")


def test_file_matching_no_encoder_key_raises_naming_it(tmp_path):
    save_file({"something.else": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    encoder = TimmEncoder("resnet18", in_channels=3, img_size=32)
    with pytest.raises(PretrainedWeightsError, match="foreign.safetensors"):
        load_pretrained_encoder(encoder, tmp_path / "foreign.safetensors")


def test_missing_file_raises_naming_it(tmp_path):
    encoder = TimmEncoder("resnet18", in_channels=3, img_size=32)
    with pytest.raises(PretrainedWeightsError, match="nowhere.safetensors.*does not exist"):
        load_pretrained_encoder(encoder, tmp_path / "nowhere.safetensors")


def test_partial_file_reports_missing_and_unexpected(tmp_path, resnet_file):
    _, state = resnet_file
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    partial["extra.weight"] = torch.zeros(2)
    save_file(partial, str(tmp_path / "partial.safetensors"))
    encoder = TimmEncoder("resnet18", in_channels=3, img_size=32)

    report = load_pretrained_encoder(encoder, tmp_path / "partial.safetensors")

    assert report["unexpected_keys"] == ["extra.weight"]
    assert report["missing_keys"] and all(k.startswith("model.layer4.") for k in report["missing_keys"])


def test_wrong_shape_raises(tmp_path, resnet_file):
    _, state = resnet_file
    save_file({**state, "layer1.0.conv1.weight": torch.zeros(8, 64, 3, 3)}, str(tmp_path / "bad.safetensors"))
    encoder = TimmEncoder("resnet18", in_channels=3, img_size=32)
    with pytest.raises(PretrainedWeightsError, match="layer1.0.conv1.weight"):
        load_pretrained_encoder(encoder, tmp_path / "bad.safetensors")


def test_export_round_trips_through_medpeft_and_plain_timm(tmp_path):
    name = "swin_tiny_patch4_window7_224"  # the family whose features_only names differ (layers_0 vs layers.0)
    source = TimmEncoder(name, in_channels=1, img_size=64)
    exported = encoder_state_dict_for_timm(source)
    assert not any(k.startswith(("model.", "layers_")) for k in exported)  # plain timm names
    save_file(exported, str(tmp_path / "enc.safetensors"))

    target = TimmEncoder(name, in_channels=1, img_size=64)
    report = load_pretrained_encoder(target, tmp_path / "enc.safetensors")
    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    for (key, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)

    plain = timm.create_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(tmp_path / "enc.safetensors")},
        num_classes=0,
        **source.timm_kwargs,
    )
    plain_state = plain.state_dict()
    for key, value in exported.items():
        torch.testing.assert_close(plain_state[key], value, rtol=0, atol=0, msg=key)


def test_whole_network_file_initialises_decoder_except_a_head_of_another_shape(tmp_path, caplog):
    from medpeft.models import build_segmenter

    source = build_segmenter("resnet18", num_classes=4, in_channels=1, img_size=64)
    state = dict(encoder_state_dict_for_timm(source.encoder))
    state.update({f"decoder.{key}": value for key, value in source.decoder.state_dict().items()})
    path = tmp_path / "network.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))

    with caplog.at_level("WARNING"):
        target = build_segmenter("resnet18", pretrained=str(path), num_classes=2, in_channels=1, img_size=64)
    assert "unexpected" not in caplog.text  # decoder.* tensors are not reported as unknown encoder keys
    for key, value in target.decoder.state_dict().items():
        if key.startswith("head."):  # 4 classes in the file, 2 here: the head keeps its fresh init
            assert value.shape != source.decoder.state_dict()[key].shape
        else:
            assert torch.equal(value, source.decoder.state_dict()[key]), key
    for key, value in target.encoder.state_dict().items():
        assert torch.equal(value, source.encoder.state_dict()[key]), key
    assert "head.weight" in caplog.text  # the skipped tensors are named
