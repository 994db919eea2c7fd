"""The only code that changes a model: choose target layers, wrap them in adapters, freeze the rest.

Targets are glob patterns over qualified module names (``fnmatch``; ``*`` also crosses dots), matched
either against the whole name or as a dotted suffix, so ``"blocks.*.attn.qkv"`` also finds
``"model.blocks.3.attn.qkv"`` inside a timm ``features_only`` wrapper. A pattern written ``"re:<regex>"``
is a regular expression (full match). Named presets expand to patterns (see :data:`PRESETS`).

``blocks`` restricts targets to residual blocks by index: blocks are the containers named ``blocks.<k>``
(ViT, Swin, ConvNeXt), ``blocks.<s>.<k>`` (EfficientNet, whose ``blocks.<s>`` are stages) or ``layer<s>.<k>``
(ResNet) numbered 0, 1, ... in forward (``named_modules``) order across the whole encoder, so on swin_tiny they
run 0..11 over the four stages, on resnet18 0..7 and on efficientnet_b0 0..15; negative indices count from the
end. Modules outside any block are then excluded.

Adapters need ``groups = 1``: a grouped or depthwise convolution (ConvNeXt's and EfficientNet's ``conv_dw``,
ResNeXt's ``conv2``) that a pattern matches is refused with its name, before anything changes; ``all-conv`` skips
them, and the ``conv`` preset selects only ``groups = 1`` layers on ResNet and EfficientNet.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from medpeft.adapters import methods as _methods  # noqa: F401  (registers every shipped method)
from medpeft.adapters.base import (
    AdapterLayer,
    AdapterMethod,
    AdapterModule,
    adapter_module_types,
    get_adapter_method,
    replace_module,
    supported_base_layer,
)
from medpeft.adapters.tcurlora import GROUPS_ATTRIBUTE, TCURGroup

__all__ = [
    "ADAPTER_RECORD_ATTRIBUTE",
    "PRESETS",
    "adapter_layers",
    "adapter_method_of",
    "adapter_modules",
    "adapter_parameters",
    "block_indices",
    "inject_adapters",
    "merge_adapters",
    "merge_refusal",
    "prepare_adapters",
    "regularization_loss",
    "resolve_targets",
    "step_adapters",
    "tcurlora_groups",
    "trained_base_parameters",
    "unmerge_adapters",
]

ADAPTER_RECORD_ATTRIBUTE = "medpeft_adapter_record"

# Transformer presets name the layers of residual blocks ``[<prefix>.]blocks.<k>``: ViT ``blocks.3.mlp.fc1``,
# Swin ``layers.0.blocks.1.mlp.fc1``, features_only ``model.blocks.3.mlp.fc1``. A glob ``*mlp.fc1`` would also
# catch MLPs that are not the block's: the relative-position MLP inside attention (``vit_relpos_*``:
# ``blocks.0.attn.rel_pos.mlp.fc1``) and the attention-pooling head (``attn_pool.mlp.fc1``).
_BLOCK_LAYER = r"re:(.*\.)?blocks\.\d+\."
PRESETS: dict[str, tuple[str, ...]] = {
    # fused qkv (or EVA-02's separate q / k / v projections) and the output projection
    "attn": (_BLOCK_LAYER + r"attn\.qkv", _BLOCK_LAYER + r"attn\.[qkv]_proj", _BLOCK_LAYER + r"attn\.proj"),
    "qkv": (_BLOCK_LAYER + r"attn\.qkv", _BLOCK_LAYER + r"attn\.[qkv]_proj"),
    # block MLPs of ViT, Swin, EVA (SwiGLU: fc1_g, fc1_x) and ConvNeXt (its pointwise layers are nn.Linear)
    "mlp": (_BLOCK_LAYER + r"mlp\.fc1(_g|_x)?", _BLOCK_LAYER + r"mlp\.fc2"),
    # ResNet: the convolutions inside residual blocks; EfficientNet: the pointwise convolutions of its blocks
    "conv": ("*layer[1-4].*.conv[1-3]", r"re:(.*\.)?blocks\.\d+\.\d+\.conv_pwl?"),
    "all-linear": ("<all-linear>",),  # every nn.Linear except a classifier head
    "all-conv": ("<all-conv>",),  # every nn.Conv2d with groups=1
    # the residual blocks themselves (VPT-deep's prompt insertion points) and their attention / MLP sub-modules
    # (where serial and parallel bottleneck adapters go)
    "blocks": (r"re:(.*\.)?blocks\.\d+",),
    "attn-module": (_BLOCK_LAYER + r"attn",),
    "mlp-module": (_BLOCK_LAYER + r"mlp",),
    "all": ("<all>",),  # every module (methods that choose their own tensors: BitFit, normalisation tuning)
}

_BLOCK = re.compile(r"^(.*?(?:^|\.)(?:blocks|layer\d+)\.\d+(?:\.\d+)?)(?:\.|$)")


def resolve_targets(targets: str | Iterable[str]) -> list[str]:
    """Expand presets; keep other entries as patterns, in order and without repeats."""
    if isinstance(targets, str):
        targets = [targets]
    patterns: list[str] = []
    for target in targets:
        for pattern in PRESETS.get(target, (target,)):
            if pattern not in patterns:
                patterns.append(pattern)
    if not patterns:
        raise ValueError("targets is empty; give glob patterns or presets " + ", ".join(PRESETS))
    return patterns


def _matches(name: str, module: nn.Module, pattern: str) -> bool:
    if pattern == "<all>":
        return True
    if pattern == "<all-linear>":
        return isinstance(module, nn.Linear) and "head" not in name.split(".")
    if pattern == "<all-conv>":
        return isinstance(module, nn.Conv2d) and module.groups == 1
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def block_indices(model: nn.Module) -> dict[str, int]:
    """Map each block container's qualified name to its index in forward order (see module docstring)."""
    index: dict[str, int] = {}
    for name, module in model.named_modules():
        # only modules that hold weights: EfficientNet's stage container blocks.<s> must not count as a block
        if next(module.parameters(recurse=False), None) is None and next(module.buffers(recurse=False), None) is None:
            continue
        found = _BLOCK.match(name)
        if found and found.group(1) not in index:
            index[found.group(1)] = len(index)
    return index


def _block_of(name: str, blocks: dict[str, int]) -> int | None:
    found = _BLOCK.match(name)
    return blocks.get(found.group(1)) if found else None


def _select(
    model: nn.Module, patterns: list[str], blocks: list[int] | None, method: AdapterMethod
) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, first matching pattern)`` in ``named_modules`` order; a module ``method`` refuses raises,
    except under the catch-all ``all`` preset, where it is skipped."""
    allowed: set[int] | None = None
    if blocks is not None:
        index = block_indices(model)
        if not index:
            raise ValueError("blocks was given but the model has no 'blocks.<k>' or 'layer<s>.<k>' containers")
        n = len(index)
        bad = [b for b in blocks if not -n <= b < n]
        if bad:
            raise ValueError(f"block indices {bad} out of range: the model has {n} blocks (0..{n - 1})")
        allowed = {b % n for b in blocks}
        block_of = {name: _block_of(name, index) for name, _ in model.named_modules()}
    matches = []
    for name, module in model.named_modules():
        if not name:
            continue
        pattern = next((p for p in patterns if _matches(name, module, p)), None)
        if pattern is None:
            continue
        if isinstance(module, adapter_module_types()) or ".base_layer" in f".{name}.":
            raise ValueError(f"module {name!r} already has an adapter; inject adapters once per model")
        if allowed is not None and block_of[name] not in allowed:
            continue
        refusal = method.refuse(name, module)
        if refusal is not None:
            if pattern in ("<all>", "<all-linear>", "<all-conv>"):
                continue
            raise ValueError(f"target {pattern!r} matched {refusal} (method {method.name!r})")
        matches.append((name, module, pattern))
    return matches


def _candidates(model: nn.Module, limit: int = 8) -> str:
    names = [name for name, module in model.named_modules() if supported_base_layer(module)]
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def _build_config(method: str, options: dict[str, Any]) -> Any:
    config_cls = get_adapter_method(method).config_cls
    allowed = [field.name for field in dataclasses.fields(config_cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; allowed: {allowed}")
    return config_cls(**options)


def inject_adapters(
    model: nn.Module,
    method: str,
    targets: str | Iterable[str],
    blocks: Iterable[int] | None = None,
    **options: Any,
) -> list[str]:
    """Wrap the target layers of ``model`` in adapters and freeze every other parameter.

    Args:
        model: any module, typically a timm encoder; it is modified in place.
        method: a registered method (:data:`~medpeft.adapters.ADAPTERS`: ``"lora"``, ``"trm"``, ``"tcurlora"``, the
            baselines of ``medpeft/adapters/methods.py``).
        targets: glob patterns, ``"re:"`` regexes or presets (:data:`PRESETS`).
        blocks: optional block indices to restrict the targets to.
        **options: the method's options, the fields of its options dataclass (``rank`` and see
            :class:`LoRAConfig`, :class:`TRMConfig`, :class:`TCURLoRAConfig`, ...).

    Returns:
        The sorted qualified names of the adapted modules.

    Raises:
        ValueError: unknown method or option, nothing matched (a few candidate names are listed), a match
            the method refuses (its reason, e.g. not an ``nn.Linear``/``nn.Conv2d``), or a model that already has
            adapters. Injection is all or
            nothing: when a layer is refused, every layer wrapped before it is put back and ``model`` is unchanged.
    """
    if hasattr(model, ADAPTER_RECORD_ATTRIBUTE):
        raise ValueError("this model already has adapters; inject adapters once per model")
    config = _build_config(method, options)
    registered = get_adapter_method(method)
    patterns = resolve_targets(targets)
    block_list = None if blocks is None else [int(b) for b in blocks]
    matches = _select(model, patterns, block_list, registered)
    if not matches:
        raise ValueError(
            f"targets {list(patterns)} (blocks={block_list}) matched no module; "
            f"adaptable layers in this model include: {_candidates(model)}"
        )
    trainable = {parameter: parameter.requires_grad for parameter in model.parameters()}
    try:
        base_parameters = registered.apply(model, matches, config) or []
    except Exception:
        # all or nothing: a layer refused halfway (say LoRA dropout on a conv subclass) must not leave a
        # half-injected model behind
        for name, module, _ in sorted(matches, key=lambda match: -match[0].count(".")):  # inner modules first
            replace_module(model, name, module)
        if registered.cleanup is not None:
            registered.cleanup(model)
        for parameter, flag in trainable.items():
            parameter.requires_grad_(flag)
        raise

    for module in adapter_modules(model).values():  # new modules start in training mode; follow the model's
        module.train(model.training)
    names = sorted(name for name, _, _ in matches)
    setattr(
        model,
        ADAPTER_RECORD_ATTRIBUTE,
        {
            "method": method,
            "options": dataclasses.asdict(config),
            "targets": patterns,
            "blocks": block_list,
            "modules": names,
            "base_parameters": sorted(base_parameters),
        },
    )
    model.requires_grad_(False)
    for parameter in adapter_parameters(model):
        parameter.requires_grad_(True)
    return names


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Every weight adapter layer (:class:`AdapterLayer`) of ``model`` by qualified name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, AdapterLayer)}


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every adapter module of ``model`` (medpeft's and registered foreign types such as peft's layers) by name."""
    types = adapter_module_types()
    return {name: module for name, module in model.named_modules() if isinstance(module, types)}


def adapter_method_of(model: nn.Module) -> AdapterMethod:
    """The registered method ``model`` was injected with."""
    record = getattr(model, ADAPTER_RECORD_ATTRIBUTE, None)
    if record is None:
        raise ValueError("this model has no adapters: call inject_adapters(model, ...) first")
    return get_adapter_method(record["method"])


def trained_base_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the method named when it was applied (BitFit's biases, peft's trainable adapter tensors), by
    qualified name in ``model``, which may be the injected module or contain it (a segmenter and its encoder); empty
    for methods whose trainable tensors all live in medpeft adapter modules."""
    found: dict[str, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        record = module.__dict__.get(ADAPTER_RECORD_ATTRIBUTE)
        if not record or not record.get("base_parameters"):
            continue
        parameters = dict(module.named_parameters(remove_duplicate=False))
        dot = f"{prefix}." if prefix else ""
        found.update({f"{dot}{name}": parameters[name] for name in record["base_parameters"]})
    return found


def tcurlora_groups(model: nn.Module) -> dict[str, TCURGroup]:
    """The tCURLoRA groups of ``model`` by name (empty for other methods)."""
    groups = getattr(model, GROUPS_ATTRIBUTE, None)
    return dict(groups.items()) if groups is not None else {}


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that train under the model's method, each once: those of medpeft's adapter modules, found by
    module type (never by name pattern), outside the frozen layers they wrap, plus the tensors the method named when it
    was applied (BitFit's biases, the parameters peft left trainable in its layers)."""
    found: dict[int, nn.Parameter] = {}
    for module in adapter_modules(model).values():
        if not isinstance(module, AdapterModule):
            continue  # another library's layers: their trainable tensors are named in the record (peft_methods.py)
        for name, parameter in module.named_parameters():
            if not name.startswith("base_layer.") and ".base_layer." not in f".{name}":
                found[id(parameter)] = parameter
    for parameter in trained_base_parameters(model).values():
        found[id(parameter)] = parameter
    return list(found.values())


def merge_refusal(model: nn.Module) -> str | None:
    """Why :func:`merge_adapters` cannot fold the model's method into the plain network; ``None`` when it can (or
    nothing is injected)."""
    if not hasattr(model, ADAPTER_RECORD_ATTRIBUTE):
        return None
    return adapter_method_of(model).merge_refusal


def merge_adapters(model: nn.Module, safe: bool = False, unload: bool = False) -> None:
    """Fold every adapter's delta into its base weight; the forward becomes the plain layers'.

    Args:
        model: a model given to :func:`inject_adapters`.
        safe: check every merged weight for NaN/inf before writing it.
        unload: also put the plain base layers back in place of the wrappers (an export with no trace of
            medpeft; :func:`unmerge_adapters` is then impossible).
    """
    if not hasattr(model, ADAPTER_RECORD_ATTRIBUTE):
        return  # nothing injected (full, decoder_only): already the plain network
    method = adapter_method_of(model)
    if method.merge_refusal is not None:
        raise ValueError(f"{method.name} cannot be merged into the plain network: {method.merge_refusal}")
    layers = {name: module for name, module in adapter_modules(model).items() if hasattr(module, "merge")}
    groups = tcurlora_groups(model).values()
    for group in groups:  # compute each tCURLoRA group's delta once, not once per member layer
        group.start_forward_pass()
    try:
        for layer in layers.values():
            layer.merge(safe)  # positional: medpeft's merge(safe) and peft's merge(safe_merge)
    finally:
        for group in groups:
            group.end_forward_pass()
    if unload:
        for name, layer in layers.items():
            replace_module(model, name, layer.base_layer)
        if method.cleanup is not None:
            method.cleanup(model)
        model.__dict__.pop(ADAPTER_RECORD_ATTRIBUTE, None)


def unmerge_adapters(model: nn.Module) -> None:
    """Undo :func:`merge_adapters`."""
    for layer in adapter_modules(model).values():
        if hasattr(layer, "unmerge"):
            layer.unmerge()


def prepare_adapters(model: nn.Module, total_steps: int) -> None:
    """Tell the model's method how many optimizer steps training will take (AdaLoRA's schedule); a no-op for most."""
    record = getattr(model, ADAPTER_RECORD_ATTRIBUTE, None)
    if record is not None and (prepare := get_adapter_method(record["method"]).prepare) is not None:
        prepare(model, total_steps)


def step_adapters(model: nn.Module, global_step: int) -> None:
    """Run the method's per-step work after an optimizer step, gradients still present (AdaLoRA's rank allocator)."""
    record = getattr(model, ADAPTER_RECORD_ATTRIBUTE, None)
    if record is not None and (on_step := get_adapter_method(record["method"]).on_step) is not None:
        on_step(model, global_step)


def regularization_loss(model: nn.Module) -> torch.Tensor:
    """The summed adapter regularisers (TRM's identity/orthogonal penalty, AdaLoRA's orthogonality); a zero scalar
    for methods without one."""
    terms = [term for layer in adapter_layers(model).values() if (term := layer.regularization()) is not None]
    record = getattr(model, ADAPTER_RECORD_ATTRIBUTE, None)
    penalty = get_adapter_method(record["method"]).regularization if record is not None else None
    if penalty is not None and (term := penalty(model)) is not None:
        terms.append(term)
    if terms:
        return torch.stack(terms).sum()
    reference = next(model.parameters(), None)
    return torch.zeros((), device=reference.device if reference is not None else None)
