"""Load pretrained weights into a :class:`~medpeft.models.encoder.TimmEncoder`, and export them back.

Weights come from timm's model hub (``pretrained=True``) or from a local *timm-compatible* file: a state dict
keyed like the plain timm model (``blocks.0.attn.qkv.weight``, ``patch_embed.proj.weight``,
``layer1.0.conv1.weight``), as ``.safetensors`` or as a ``.pth``/``.pt``/``.bin`` torch pickle (read with
``weights_only=True``, so a file cannot run code; a top-level ``state_dict`` or ``model`` entry is unwrapped).

A file published in another layout (official SAM / MedSAM, DINOv2 and EfficientNet-Lite checkpoints) is first
renamed onto timm's names by :func:`medpeft.models.official_weights.to_timm_names`; the tensors it drops (SAM's
``prompt_encoder.*`` and ``mask_decoder.*``, DINOv2's ``mask_token``) are logged. Then the file is adapted to the
encoder the way timm adapts its own checkpoints (``timm.models._builder.load_pretrained``):

1. the architecture's ``checkpoint_filter_fn`` (from its timm module) runs against a weightless copy of the plain
   model with the encoder's ``img_size``; it resamples ViT position embeddings and resizes Swin relative-position
   bias tables to the new grid / window;
2. the first conv (``pretrained_cfg["first_conv"]``) is adapted to ``in_channels`` with ``adapt_input_conv``
   (summed for one channel, repeated and rescaled otherwise);
3. plain timm names are mapped onto the encoder's (``features_only`` flattens Swin's ``layers.0`` to
   ``layers_0``); tensors of plain-model parts that ``features_only`` drops (classifier head, final norm, blocks
   after the last ``out_indices`` entry) are skipped silently; names the plain model does not know are reported
   as unexpected.

Hub weights (``pretrained=True``) are loaded by timm itself into a plain model built with the encoder's
architecture kwargs (timm does steps 1 and 2), then mapped as in step 3. When the hub cannot be reached (no
connection within a few seconds, or ``HF_HUB_OFFLINE=1``) only the local hub cache is tried, so the failure is
quick and ends in one :class:`PretrainedWeightsError` line that names the weights and the config fix.

Loading is non-strict: the returned report lists what was loaded and what is missing or unexpected.

A file may also carry a whole pre-trained network: tensors named ``decoder.<name>`` (as in ``Segmenter.decoder``,
written by ``scripts/pretrain.py --with-decoder``) are left out of the encoder's load and go to
:func:`load_pretrained_decoder`, which copies every decoder tensor whose shape fits and skips the rest (typically
the 1x1 head when the target task has another number of classes), reporting both.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import adapt_input_conv
from torch import nn

from medpeft.io import atomic_output
from medpeft.models.encoder import TimmEncoder
from medpeft.models.official_weights import to_timm_names

__all__ = [
    "DECODER_PREFIX",
    "PretrainedWeightsError",
    "convert_weights_file",
    "encoder_state_dict_for_timm",
    "load_pretrained_decoder",
    "load_pretrained_encoder",
]

_logger = logging.getLogger(__name__)
DECODER_PREFIX = "decoder."

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_PROBE_TIMEOUT_S = 3.0
_FIX = "set `model.pretrained: /path/to/weights.safetensors` (a timm-compatible file) or `model.pretrained: false`"


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were requested but cannot be obtained or do not fit the encoder."""


def _plain_model(encoder: TimmEncoder) -> nn.Module:
    """The plain (non-``features_only``) timm model matching ``encoder``, on the meta device (no memory)."""
    with torch.device("meta"):
        return timm.create_model(encoder.name, pretrained=False, **encoder.timm_kwargs)


def _plain_key(key: str, plain_keys: set[str]) -> str | None:
    """The plain timm name of an encoder state-dict key, or None if the plain model has no such tensor.

    ``features_only`` keeps names, except that it flattens a top-level ``nn.Sequential`` (``layers.0`` ->
    ``layers_0``); each underscore of the first name component is tried as such a flattened dot.
    """
    head, dot, rest = key.partition(".")
    candidates = [key] + [head[:i] + "." + head[i + 1 :] + dot + rest for i, c in enumerate(head) if c == "_"]
    return next((c for c in candidates if c in plain_keys), None)


def _hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be used right now, or None if it may be reachable.

    huggingface_hub retries an unreachable host with back-off for about a minute per file, and reads
    ``HF_HUB_OFFLINE`` only once, when it is imported (timm imports it). So the variable is re-read here, and
    otherwise one TCP connect with a short timeout decides. The probe is skipped behind an HTTPS proxy, which
    only the hub client knows how to use.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return None
    from huggingface_hub import constants  # lazy: only the hub path needs it

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError:
        return f"cannot connect to {host}:{port}"
    return None


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Run hub downloads in huggingface_hub's offline mode (cache only, fails at once when not cached)."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    # the documented switch (constants.is_offline_mode() returns it), normally frozen at import
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _hub_state_dict(encoder: TimmEncoder) -> tuple[dict[str, torch.Tensor], set[str], str]:
    """Fetch timm's pretrained weights (hub or local hub cache), already adapted to the encoder by timm.

    Returns:
        The plain model's state dict, its key set, and a description of the source.

    Raises:
        PretrainedWeightsError: If timm has no weights for the model or they cannot be downloaded.
    """
    cfg = encoder.model.pretrained_cfg
    source = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")
    if not source:
        raise PretrainedWeightsError(f"timm has no pretrained weights for {encoder.name!r}; {_FIX}.")
    offline_reason = _hub_offline_reason()
    try:
        with _hub_offline(offline_reason is not None):
            # num_classes=0: no classifier to adapt; timm resamples pos-embeds/windows and adapts in_chans itself
            plain = timm.create_model(encoder.name, pretrained=True, num_classes=0, **encoder.timm_kwargs)
    except Exception as e:  # any hub-client/network failure; the cause stays chained for debugging
        why = offline_reason or type(e).__name__
        raise PretrainedWeightsError(
            f"Could not download pretrained weights {source!r} for encoder {encoder.name!r}: the model hub is "
            f"unreachable ({why}) and they are not in the local cache. Fix: {_FIX}."
        ) from e
    state_dict = plain.state_dict()
    return state_dict, set(state_dict), f"timm hub weights {source!r}"


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``).

    Raises:
        PretrainedWeightsError: If the file is missing, of an unknown type, unreadable or not a state dict.
    """
    if not path.is_file():
        raise PretrainedWeightsError(f"Pretrained weights file {str(path)!r} does not exist; {_FIX}.")
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in _TORCH_SUFFIXES:
        raise PretrainedWeightsError(
            f"Cannot read pretrained weights file {str(path)!r}: expected .safetensors or {'/'.join(_TORCH_SUFFIXES)}."
        )
    try:
        if suffix == ".safetensors":
            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with non-tensor objects, ...
        raise PretrainedWeightsError(
            f"Cannot read pretrained weights file {str(path)!r} ({type(e).__name__}: {e})."
        ) from e
    for wrapper in ("state_dict", "model"):  # training checkpoints often nest the weights
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"Pretrained weights file {str(path)!r} does not hold a state dict of tensors.")
    return dict(state)


def _filter_fn(model: nn.Module) -> Callable[[dict, nn.Module], dict] | None:
    """timm's per-architecture checkpoint converter (``checkpoint_filter_fn`` in the model's module), if any."""
    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def _file_state_dict(encoder: TimmEncoder, path: Path) -> tuple[dict[str, torch.Tensor], set[str], str, list[str]]:
    """Read a timm-compatible or officially laid out file and adapt it to the encoder's image size and channels.

    Returns:
        The adapted state dict (plain timm names), the plain model's key set, a description of the source, and
        the file's keys dropped as no part of the model (official layouts only).
    """
    state_dict = {key: value for key, value in _read_file(path).items() if not key.startswith(DECODER_PREFIX)}
    plain = _plain_model(encoder)
    filter_fn = _filter_fn(plain)
    try:
        state_dict, dropped, layout = to_timm_names(state_dict, plain)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, plain)
        first_convs = plain.pretrained_cfg.get("first_conv") or ()
        for conv in (first_convs,) if isinstance(first_convs, str) else first_convs:
            weight = state_dict.get(f"{conv}.weight")
            if weight is not None and weight.ndim == 4 and weight.shape[1] != encoder.in_channels:
                adapted = adapt_input_conv(encoder.in_channels, weight, base_chans=weight.shape[1])
                state_dict[f"{conv}.weight"] = adapted
    except Exception as e:  # a file for another architecture trips timm's converters in many ways
        raise PretrainedWeightsError(
            f"Pretrained weights file {str(path)!r} cannot be adapted to encoder {encoder.name!r} "
            f"({type(e).__name__}: {e})."
        ) from e
    if dropped:
        _logger.info(
            "Pretrained file %r (%s layout): %d dropped: %s", str(path), layout, len(dropped), ", ".join(dropped)
        )
    return state_dict, set(plain.state_dict()), f"file {str(path)!r}", dropped


def _load_into(
    encoder: TimmEncoder, state_dict: Mapping[str, torch.Tensor], plain_keys: set[str], source: str
) -> dict[str, list[str]]:
    """Copy the plain-named ``state_dict`` into the encoder (non-strict) and report what happened."""
    own = encoder.model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        plain = _plain_key(key, plain_keys)
        if plain is None or plain not in state_dict:
            continue
        if state_dict[plain].shape != target.shape:
            raise PretrainedWeightsError(
                f"Pretrained {source}: {plain} has shape {tuple(state_dict[plain].shape)} but encoder "
                f"{encoder.name!r} expects {tuple(target.shape)}; the weights are for another architecture."
            )
        to_load[key] = state_dict[plain]
    if not to_load:
        raise PretrainedWeightsError(
            f"No tensor in pretrained {source} matches encoder {encoder.name!r}: file keys look like "
            f"{sorted(state_dict)[:3]}, expected timm names like {sorted(plain_keys)[:3]}."
        )
    encoder.model.load_state_dict(to_load, strict=False)

    report = {
        "missing_keys": [f"model.{k}" for k in own if k not in to_load],
        "unexpected_keys": sorted(k for k in state_dict if k not in plain_keys),
        "loaded": [f"model.{k}" for k in to_load],
    }
    for kind in ("missing_keys", "unexpected_keys"):
        if report[kind]:
            _logger.warning("Pretrained %s: %d %s: %s", source, len(report[kind]), kind, ", ".join(report[kind]))
    return report


def load_pretrained_encoder(encoder: TimmEncoder, pretrained: bool | str | Path) -> dict[str, list[str]]:
    """Load pretrained weights into ``encoder`` in place.

    Args:
        encoder: The encoder to initialise.
        pretrained: ``False`` (keep the random init), ``True`` (timm's default pretrained weights for
            ``encoder.name`` from the model hub; a cached copy is used offline), or the path of a timm-compatible
            or official SAM / MedSAM / DINOv2 / EfficientNet-Lite ``.safetensors``/``.pth``/``.pt``/``.bin`` file
            (see the module docstring for how it is adapted).

    Returns:
        A report with ``missing_keys`` (encoder tensors left at their init, named as in the encoder, e.g.
        ``model.blocks.0.attn.qkv.weight``), ``unexpected_keys`` (file tensors the timm model does not know, as
        named in the file) and ``loaded`` (encoder tensors that were overwritten). All empty for ``False``.

    Raises:
        PretrainedWeightsError: If the hub is unreachable, or the file is missing, unreadable, does not fit
            the encoder's shapes, or matches none of its tensors. The message says how to fix the config.
    """
    if pretrained is False:
        return {"missing_keys": [], "unexpected_keys": [], "loaded": []}
    if pretrained is True:
        state_dict, plain_keys, source = _hub_state_dict(encoder)
    else:
        state_dict, plain_keys, source, _ = _file_state_dict(encoder, Path(pretrained).expanduser())
    return _load_into(encoder, state_dict, plain_keys, source)


def convert_weights_file(encoder: TimmEncoder, src: str | Path, dst: str | Path) -> dict[str, list[str]]:
    """Write a weights file as the timm-named safetensors of ``encoder``'s plain timm model.

    ``src`` is read and adapted as by :func:`load_pretrained_encoder` (official layouts renamed, position tables
    resampled to ``encoder.img_size``, first conv adapted to ``encoder.in_channels``) and loaded into ``encoder``,
    which checks every shape; the tensors the plain timm model knows are written to ``dst`` (atomically), which
    ``model.pretrained: dst`` then loads with no conversion.

    Returns:
        ``mapped`` (timm names written), ``dropped`` (file tensors of no part of the model, as named in the file),
        ``missing_keys`` and ``unexpected_keys`` as reported by :func:`load_pretrained_encoder`.

    Raises:
        PretrainedWeightsError: As :func:`load_pretrained_encoder`.
    """
    state_dict, plain_keys, source, dropped = _file_state_dict(encoder, Path(src).expanduser())
    report = _load_into(encoder, state_dict, plain_keys, source)
    # clone: converted tensors may be views of one file tensor, and safetensors refuses shared storage
    mapped = {key: value.detach().clone().contiguous() for key, value in state_dict.items() if key in plain_keys}
    with atomic_output(Path(dst).expanduser()) as temporary:
        save_file(mapped, str(temporary))
    return {
        "mapped": sorted(mapped),
        "dropped": dropped,
        "missing_keys": report["missing_keys"],
        "unexpected_keys": report["unexpected_keys"],
    }


def load_pretrained_decoder(decoder: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Copy the ``decoder.*`` tensors of a pre-trained network file into ``decoder`` where the shapes fit.

    Args:
        decoder: ``Segmenter.decoder`` of the network being built.
        path: A file as accepted by :func:`load_pretrained_encoder`; a file without ``decoder.*`` tensors (an
            encoder-only file) changes nothing.

    Returns:
        ``loaded`` (decoder tensor names copied) and ``skipped`` (names present in both with another shape, e.g.
        the head of a task with another class count; they keep their fresh init).
    """
    state = {
        key.removeprefix(DECODER_PREFIX): value
        for key, value in _read_file(Path(path).expanduser()).items()
        if key.startswith(DECODER_PREFIX)
    }
    own = decoder.state_dict()
    fits = {key: value for key, value in state.items() if key in own and value.shape == own[key].shape}
    report = {"loaded": sorted(fits), "skipped": sorted(key for key in state if key in own and key not in fits)}
    if fits:
        decoder.load_state_dict(fits, strict=False)
        _logger.info("Loaded %d pretrained decoder tensors from %s.", len(fits), path)
    if report["skipped"]:
        _logger.warning("Pretrained decoder tensors with other shapes kept at init: %s", ", ".join(report["skipped"]))
    return report


def encoder_state_dict_for_timm(encoder: TimmEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under plain timm names, ready for ``safetensors.torch.save_file``.

    The result loads back with :func:`load_pretrained_encoder` and with
    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...), num_classes=0, ...)``
    (``num_classes=0`` because the file has no classifier, which makes timm load non-strictly).

    Adapter wrappers keep the original layer as ``base_layer``; its weight is exported under the original
    name, and the adapters' own parameters (not part of a timm model) are left out. Merge adapters first if
    their update should be in the file; unmerged adapters are reported with a warning.

    Args:
        encoder: The encoder to export.

    Returns:
        Plain-named CPU tensors (contiguous copies, no shared storage).
    """
    plain_keys = set(_plain_model(encoder).state_dict())
    out: dict[str, torch.Tensor] = {}
    for key, tensor in encoder.model.state_dict().items():
        plain = _plain_key(key.replace(".base_layer.", "."), plain_keys)
        if plain is not None:
            out[plain] = tensor.detach().to("cpu", copy=True).contiguous()
    unmerged = _unmerged_adapters(encoder)
    if unmerged:
        _logger.warning("Exporting base weights only; adapters not merged in: %s", ", ".join(unmerged))
    return out


def _unmerged_adapters(module: nn.Module) -> list[str]:
    """Names of the adapter layers in ``module`` whose update is not merged into their base weight."""
    try:
        from medpeft.adapters import AdapterLayer  # lazy: model code does not need the adapters package
    except ImportError:  # no adapters package, hence no adapters
        return []
    return [name for name, m in module.named_modules() if isinstance(m, AdapterLayer) and not m.merged]
