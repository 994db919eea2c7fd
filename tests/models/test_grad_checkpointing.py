"""Gradient checkpointing of the encoder (medpeft.models.checkpointing): the same gradients with every adapter on a
ViT, a ResNet and a Swin, blocks really run twice, BatchNorm statistics move once per step, and tCURLoRA builds its
factors once per forward pass and never reads a stale cache in the recomputation."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models._features import FeatureGetterNet
from timm.models.vision_transformer import Block
from torch import nn

from medpeft.adapters import adapter_parameters, inject_adapters, tcurlora_groups
from medpeft.adapters.recomputation import in_backward_pass
from medpeft.adapters.tcurlora import TCURGroup, TCURLoRALayer
from medpeft.adapters.trm import TRMLayer
from medpeft.models import build_segmenter, enable_grad_checkpointing

# (timm name, image size, adapter targets, blocks to adapt, a block inside a stage that timm checkpoints). Swin: blocks
# of stages 1 and 2 only (wider TRM transforms cost seconds). LoRA has dropout and Swin timm's default stochastic depth:
# the recomputation must draw the same masks.
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", 32, ["attn", "mlp"], None, "blocks.1"),
    "resnet": ("resnet18", 32, ["conv"], None, "layer2.0"),
    "swin": ("swin_tiny_patch4_window7_224", 64, ["attn", "mlp"], [0, 2], "layers_1.blocks.0"),
}
METHODS = {"lora": {"rank": 4, "dropout": 0.1}, "trm": {"rank": 2}, "tcurlora": {"rank": 2}}
# Cases whose layers take both forward forms (effective weight and activation; each layer's rule picks by its shape
# and input): both must survive the recomputation.
BOTH_FORMS = {("swin", "trm"), ("vit", "tcurlora")}


def randomize(net: nn.Module) -> None:
    """Non-zero adapter weights everywhere (LoRA's B and tCURLoRA's dU start at zero and would hide a wrong path)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in adapter_parameters(net):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


def adapted_segmenter(family: str, method: str) -> tuple[nn.Module, torch.Tensor]:
    """A random-init segmenter with ``method`` on ``family``'s targets, and an input batch ``[2, 3, S, S]``."""
    name, size, targets, blocks, _ = FAMILIES[family]
    torch.manual_seed(0)
    net = build_segmenter(name, img_size=size)
    inject_adapters(net.encoder, method, targets, blocks=blocks, **METHODS[method])
    randomize(net)
    return net, torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def loss_of(output: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient differs per output element (a plain sum would give every position the same one)."""
    return (output * torch.randn(output.shape, generator=torch.Generator().manual_seed(2))).sum()


def gradients(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training-mode forward and backward; the gradient of every trainable parameter by name."""
    net.train()
    net.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout and stochastic-depth draws in every run
    loss_of(net(x)).backward()
    return {name: p.grad for name, p in net.named_parameters() if p.requires_grad}


def count_forwards(module: nn.Module) -> list[int]:
    """A one-element list counting calls of ``module`` from now on."""
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def record_forms(net: nn.Module) -> set[bool]:
    """The set of ``prefers_activation_form`` answers of ``net``'s TRM / tCURLoRA layers from now on."""
    forms: set[bool] = set()
    for layer in net.modules():
        if isinstance(layer, (TRMLayer, TCURLoRALayer)):
            layer.register_forward_pre_hook(lambda layer, args: forms.add(layer.prefers_activation_form(args[0])))
    return forms


def assert_same_gradients(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    missing = [name for name, grad in expected.items() if grad is None or got[name] is None]
    assert not missing, f"no gradient: {missing[:5]}"
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpointing_gives_the_same_gradients(family: str, method: str) -> None:
    net, x = adapted_segmenter(family, method)
    checkpointed = copy.deepcopy(net)
    assert enable_grad_checkpointing(checkpointed.encoder) == "timm"
    block = FAMILIES[family][4]
    runs = [count_forwards(n.encoder.model.get_submodule(block)) for n in (net, checkpointed)]
    forms = record_forms(checkpointed)

    expected, got = gradients(net, x), gradients(checkpointed, x)

    assert [calls[0] for calls in runs] == [1, 2]  # checkpointed: the forward and its recomputation in the backward
    if (family, method) in BOTH_FORMS:
        assert forms == {False, True}
    adapter_names = {name for name, p in net.named_parameters() if any(p is q for q in adapter_parameters(net))}
    assert adapter_names and any(name.startswith("decoder.") for name in expected)
    assert all(expected[name].abs().sum() > 0 for name in adapter_names if "tcur_" in name or "lora_B" in name)
    assert_same_gradients(expected, got)
    # BatchNorm (ResNet) statistics moved once, not once more in the recomputation
    for (name, buffer), other in zip(net.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(other, buffer, rtol=0, atol=0, msg=name)


def test_tcurlora_builds_its_factors_once_per_forward_and_once_per_backward_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net, x = adapted_segmenter("vit", "tcurlora")
    enable_grad_checkpointing(net.encoder)
    calls = []
    for form in ("compute_delta", "compute_left_factors"):  # the dense and the activation form's factors
        original = getattr(TCURGroup, form)
        monkeypatch.setattr(TCURGroup, form, lambda self, f=original, m=form: calls.append((self, m)) or f(self))

    net.train()
    output = net(x)
    in_forward = list(calls)
    loss_of(output).backward()
    in_backward = calls[len(in_forward) :]

    groups = set(tcurlora_groups(net.encoder).values())
    assert {group for group, _ in in_forward} == groups
    assert {form for _, form in in_forward} == {"compute_delta", "compute_left_factors"}  # both forms are in use
    assert len(in_forward) == len(set(in_forward))
    # the recomputed blocks rebuilt the factors (the forward pass's cache had ended), each group's once
    assert len(in_backward) == len(set(in_backward)) and set(in_backward) == set(in_forward)
    copy.deepcopy(net)  # the rebuilt factors kept for the backward pass hold no graph


def test_tcurlora_recomputation_ignores_a_stale_cache() -> None:
    net, x = adapted_segmenter("vit", "tcurlora")
    expected = gradients(copy.deepcopy(net), x)
    enable_grad_checkpointing(net.encoder)
    net.train()
    net.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    loss = loss_of(net(x))
    # before the backward, every group is mid-pass again, its cache holding the factors of other dU values
    for group in tcurlora_groups(net.encoder).values():
        kept = [p.detach().clone() for p in group.parameters()]
        with torch.no_grad():
            for parameter in group.parameters():
                parameter.add_(1.0)
        group.start_forward_pass()
        group.member_deltas(), group.member_left_factors()  # built with autograd on, as in a forward
        with torch.no_grad():
            for parameter, value in zip(group.parameters(), kept):
                parameter.copy_(value)
    loss.backward()
    assert_same_gradients(expected, {name: p.grad for name, p in net.named_parameters() if p.requires_grad})


# Other timm families (timm 1.0.31) whose own checkpointing medpeft relies on: (name, create_model kwargs (tiny),
# input size, a module inside a checkpointed block or stage).
TIMM_FAMILIES = [
    ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2}, 28, "blocks.0"),
    ("beit_base_patch16_224", {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}, 32, "blocks.0"),
    (
        "samvit_base_patch16",
        {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2, "window_size": 2},
        32,
        "blocks.0",
    ),
    ("convnext_atto", {}, 64, "stages_0.blocks.0"),  # FeatureListNet ends at the last map asked for, not checkpointed
    ("efficientnet_b0", {}, 64, "blocks.1.0"),
]


@pytest.mark.parametrize(("name", "kwargs", "size", "counted"), TIMM_FAMILIES, ids=[f[0] for f in TIMM_FAMILIES])
def test_timm_checkpointing_of_other_families_recomputes(name: str, kwargs: dict, size: int, counted: str) -> None:
    features = timm.create_model(name, pretrained=False, features_only=True, out_indices=(0, 1), **kwargs)
    encoder = nn.Module()  # holds the timm module as TimmEncoder does: plain transformers unwrapped
    getter = isinstance(features, FeatureGetterNet)
    encoder.model = features.model if getter else features
    assert enable_grad_checkpointing(encoder) == "timm"
    calls = count_forwards(encoder.model.get_submodule(counted))
    x = torch.rand(2, 3, size, size)

    maps = encoder.model.forward_intermediates(x, intermediates_only=True) if getter else encoder.model(x)
    sum(m.square().sum() for m in maps).backward()

    assert calls == [2]


class BlockStack(nn.Module):
    """A stem, timm ViT blocks and a head, without timm's ``set_grad_checkpointing``: the torch.utils.checkpoint path."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(12, 32)
        self.blocks = nn.Sequential(*[Block(32, num_heads=2) for _ in range(3)])
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, 12]`` tokens -> ``[B, N, 3]``."""
        return self.head(self.blocks(self.stem(x)))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_blocks_without_timm_checkpointing_are_wrapped(method: str) -> None:
    torch.manual_seed(0)
    net = BlockStack()
    inject_adapters(net, method, ["attn", "mlp"], **METHODS[method])
    net.head.requires_grad_(True)
    randomize(net)
    checkpointed = copy.deepcopy(net)
    names = [name for name, _ in checkpointed.named_modules()]
    assert enable_grad_checkpointing(checkpointed) == "torch.utils.checkpoint"
    assert [name for name, _ in checkpointed.named_modules()] == names  # adapters and state dicts see the same names
    # the wrapped forward runs the block's own forward without its __call__ hooks: count a submodule's calls
    runs = [count_forwards(net.blocks[1].attn), count_forwards(checkpointed.blocks[1].attn)]
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(1))

    expected, got = gradients(net, x), gradients(checkpointed, x)

    assert [calls[0] for calls in runs] == [1, 2]
    assert_same_gradients(expected, got)


def test_an_encoder_without_blocks_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'Sequential'.*no working set_grad_checkpointing"):
        enable_grad_checkpointing(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))


def test_reentrant_timm_checkpointing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("timm.layers.config._USE_REENTRANT_CKPT", True)  # what TIMM_REENTRANT_CKPT=1 sets
    net = build_segmenter("vit_tiny_patch16_224", img_size=32)
    with pytest.raises(ValueError, match="'vit_tiny_patch16_224'.*reentrant"):
        enable_grad_checkpointing(net.encoder)


def test_in_backward_pass_is_true_only_inside_a_backward() -> None:
    seen = []
    x = torch.ones(2, requires_grad=True)
    x.register_hook(lambda grad: seen.append(in_backward_pass()))
    (x * 2).sum().backward()
    assert seen == [True] and not in_backward_pass()
