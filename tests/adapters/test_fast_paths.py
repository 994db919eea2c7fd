"""The activation forms of TRM and tCURLoRA against their dense (effective-weight) forms, and the rules choosing them.

Each fast path must give the dense form's outputs and gradients: to float32 round-off without autocast, and within
bfloat16 tolerance of the float32 result under autocast.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import StdConv2d
from torch import nn

from medpeft.adapters import TRMConfig, TRMLayer, inject_adapters, tcurlora_groups
from medpeft.adapters.tcurlora import TCURLoRALayer

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def perturbed(module: nn.Module, scale: float = 0.1) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return module


def forced(model: nn.Module, layer_type: type, activation_form: bool) -> nn.Module:
    """A copy of ``model`` whose adapter layers of ``layer_type`` all take one form."""
    model = copy.deepcopy(model)
    layers = [layer for layer in model.modules() if isinstance(layer, layer_type)]
    assert layers
    for layer in layers:
        layer.prefers_activation_form = lambda *_: activation_form
        if activation_form:  # proof that the fast path runs: it never builds the dense delta
            layer.compute_delta_weight = _dense_delta_forbidden
    return model


def _dense_delta_forbidden() -> torch.Tensor:
    raise AssertionError("the activation form built the dense delta")


def outputs_and_gradients(
    model: nn.Module, x: torch.Tensor, autocast: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_()
    with torch.autocast(**BF16, enabled=autocast):
        out = model(x)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)  # a fixed, non-uniform upstream gradient
    (out.float() * weights).sum().backward()
    grads = {"input": x.grad} | {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return out.detach().float(), grads


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference.double()).norm() / reference.double().norm()).item()


def assert_forms_agree(model: nn.Module, layer_type: type, x: torch.Tensor, autocast: bool = True) -> None:
    """Float32: the fast form equals the dense one to round-off. Autocast (``autocast``): the fast form is within
    bfloat16 tolerance of the float32 result (for a single layer; through a deep network bfloat16 itself drifts by
    tens of percent, whichever form runs)."""
    fast, dense = forced(model, layer_type, True), forced(model, layer_type, False)
    out_fast, grads_fast = outputs_and_gradients(fast, x)
    out_dense, grads_dense = outputs_and_gradients(dense, x)
    assert relative_error(out_fast, out_dense) <= 1e-5  # float32 round-off through a whole network
    assert grads_fast.keys() == grads_dense.keys()
    for name in grads_dense:
        assert relative_error(grads_fast[name], grads_dense[name]) <= 1e-5, name
    if autocast:
        out_bf16, grads_bf16 = outputs_and_gradients(forced(model, layer_type, True), x, autocast=True)
        assert relative_error(out_bf16, out_dense) <= 2e-2
        for name in grads_dense:
            assert relative_error(grads_bf16[name], grads_dense[name]) <= 5e-2, name


TRM_LAYERS = {
    "linear": (lambda: nn.Linear(24, 40), lambda: torch.randn(3, 5, 24)),
    "conv": (lambda: nn.Conv2d(12, 8, 3, padding=1), lambda: torch.randn(2, 12, 9, 9)),
    "strided conv": (lambda: nn.Conv2d(12, 8, 3, stride=2, padding=1), lambda: torch.randn(2, 12, 9, 9)),
}


@pytest.mark.parametrize("layer", sorted(TRM_LAYERS))
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("residual", [True, False])
def test_trm_activation_form_equals_weight_form(layer: str, rank: int, residual: bool) -> None:
    torch.manual_seed(0)
    make_layer, make_input = TRM_LAYERS[layer]
    trm = perturbed(TRMLayer(make_layer(), TRMConfig(rank=rank, order=3, residual=residual)))
    assert_forms_agree(trm, TRMLayer, make_input())


@pytest.mark.parametrize("rank", [1, 3])
def test_trm_activation_form_is_the_plain_layer_at_init(rank: int) -> None:
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    trm = forced(TRMLayer(copy.deepcopy(base), TRMConfig(rank=rank, order=3)), TRMLayer, True)
    x = torch.randn(6, 24)
    assert torch.equal(trm(x), base(x))


def test_trm_rule_on_vit_base_shapes() -> None:
    """1576 tokens (batch 8 at 224 px): qkv and fc1 have more outputs than inputs and take the activation form;
    proj and fc2 keep the weight form (fc2's transform is 3072 x 3072 per token)."""
    tokens = torch.empty(8, 197, 768)
    chosen = {
        name: TRMLayer(nn.Linear(n_in, n_out), TRMConfig(rank=2, order=3)).prefers_activation_form(
            tokens if n_in == 768 else torch.empty(8, 197, n_in)
        )
        for name, n_in, n_out in [("qkv", 768, 2304), ("proj", 768, 768), ("fc1", 768, 3072), ("fc2", 3072, 768)]
    }
    assert chosen == {"qkv": True, "proj": False, "fc1": True, "fc2": False}


def test_weight_standardised_conv_keeps_the_weight_form() -> None:
    trm = TRMLayer(StdConv2d(64, 64, 3, padding=1), TRMConfig(rank=2))
    assert not trm.prefers_activation_form(torch.empty(8, 64, 56, 56))  # the activation form would be cheaper


def tcurlora_model(family: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if family == "vit":
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3, num_classes=4)
        inject_adapters(model, "tcurlora", ["attn", "mlp"], rank=2)
        x = torch.randn(2, 3, 32, 32)
    else:  # odd and even stacks, strided and 1x1 convolutions
        model = timm.create_model("resnet18", pretrained=False, zero_init_last=False, num_classes=4)
        inject_adapters(model, "tcurlora", ["conv"], rank=2)
        x = torch.randn(1, 3, 32, 32)
    model.eval()
    for group in tcurlora_groups(model).values():
        perturbed(group)
    return model, x


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_tcurlora_activation_form_equals_dense_form(family: str) -> None:
    model, x = tcurlora_model(family)
    assert_forms_agree(model, TCURLoRALayer, x, autocast=False)


class _OneMember(nn.Module):
    """A member layer of a tCURLoRA model with its group as a registered submodule, to train it alone."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.layer = model.get_submodule(name)
        self.group = self.layer.group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@pytest.mark.parametrize("name, shape", [("blocks.1.attn.qkv", (2, 17, 192)), ("blocks.2.mlp.fc2", (2, 17, 768))])
def test_tcurlora_member_under_autocast(name: str, shape: tuple[int, ...]) -> None:
    model, _ = tcurlora_model("vit")
    assert_forms_agree(_OneMember(model, name), TCURLoRALayer, torch.randn(shape))


def test_tcurlora_conv_member_under_autocast() -> None:
    model, _ = tcurlora_model("resnet")
    assert_forms_agree(_OneMember(model, "layer2.0.conv1"), TCURLoRALayer, torch.randn(1, 64, 16, 16))


def test_tcurlora_rule_on_vit_base_groups() -> None:
    """Rank 8 on a 12-block ViT-B: the MLP groups (12 members, K = 2 * 7 * 8 = 112) take the activation form; the
    attention group (48 members, K = 400) keeps the dense one."""
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, num_classes=4)
    inject_adapters(model, "tcurlora", ["attn", "mlp"], rank=8)
    block = model.blocks[0]
    chosen = {
        name: block.get_submodule(name).prefers_activation_form()
        for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }
    assert chosen == {"attn.qkv": False, "attn.proj": False, "mlp.fc1": True, "mlp.fc2": True}
