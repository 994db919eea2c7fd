"""PiSSA against a dense reference (the SVD computed here), and against peft's PiSSA initialisation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TARGETS, TinyNet, make_encoder, randomize_adapters
from safetensors.torch import load_file
from torch import nn

import medpeft.adapters.pissa  # noqa: F401  (registers "pissa")
from medpeft.adapters import (
    adapter_layers,
    adapter_parameters,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from medpeft.adapters.pissa import PiSSAConfig, PiSSALayer


def principal_part(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """``U_r S_r V_r^T`` of ``weight`` viewed as ``[out, fan_in]``, in float64."""
    u, s, vh = torch.linalg.svd(weight.detach().double().reshape(weight.shape[0], -1), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def pissa_model(family: str, rank: int = 4, seed: int = 0, **options) -> tuple[nn.Module, torch.Tensor]:
    model, x = make_encoder(family, seed)
    inject_adapters(model, "pissa", TARGETS[family], rank=rank, **options)
    return model, x


@pytest.mark.parametrize("form", ["factorised", "effective weight"])
@pytest.mark.parametrize("alpha", [None, 2.0])
def test_delta_is_trained_product_minus_principal_part(alpha, form, monkeypatch):
    rank = 3
    if form == "effective weight":
        monkeypatch.setattr(PiSSALayer, "prefers_activation_form", lambda self: False)
    torch.manual_seed(0)
    model = TinyNet().eval()
    weights = {name: module.weight.detach().clone() for name, module in model.named_children()}
    inject_adapters(model, "pissa", ["stem", "lin"], rank=rank, alpha=alpha)
    randomize_adapters(model, scale=0.1)
    scaling = 1.0 if alpha is None else alpha / rank
    generator = torch.Generator().manual_seed(3)
    for name, layer in adapter_layers(model).items():
        w0 = weights[name]
        assert torch.equal(layer.base_layer.weight, w0)  # the frozen weight is never replaced by the residual
        # The principal part the layer subtracts is U_r S_r V_r^T of W0 (float32 SVD against float64: singular
        # vectors are accurate to about eps * ||W0|| / singular value gap).
        stored = scaling * layer.pissa_B0.double() @ layer.pissa_A0.double()
        torch.testing.assert_close(stored, principal_part(w0, rank), rtol=0, atol=5e-5)
        trained = layer.pissa_B.detach().double() @ layer.pissa_A.detach().double()
        torch.testing.assert_close(
            layer.delta_weight().double(),
            (scaling * trained - principal_part(w0, rank)).reshape(w0.shape),
            rtol=0,
            atol=5e-5,
        )
        # ... and exactly that difference is what the layer adds, in either forward form.
        expected = (scaling * trained - stored).reshape(w0.shape)
        torch.testing.assert_close(layer.delta_weight().double(), expected, rtol=1e-5, atol=1e-6)
        assert expected.abs().max() > 1e-2
        with torch.no_grad():
            if layer.is_conv:
                probe = torch.randn(2, 3, 9, 9, generator=generator)
                reference = F.conv2d(probe.double(), w0.double() + expected, layer.base_layer.bias.double(), 2, 1)
            else:
                probe = torch.randn(5, 64, generator=generator)
                reference = F.linear(probe.double(), w0.double() + expected, layer.base_layer.bias.double())
            assert layer.prefers_activation_form() == (form == "factorised")
            torch.testing.assert_close(layer(probe).double(), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(TARGETS))
def test_exactly_the_base_network_at_init(family):
    base, x = make_encoder(family)
    model, _ = pissa_model(family)
    layers = adapter_layers(model).values()
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
        assert all(torch.count_nonzero(layer.delta_weight()) == 0 for layer in layers)


@pytest.mark.parametrize("family", ["vit", "efficientnet"])
def test_merge_equals_unmerged(family):
    model, x = pissa_model(family)
    randomize_adapters(model)
    originals = {name: layer.base_layer.weight.detach().clone() for name, layer in adapter_layers(model).items()}
    with torch.no_grad():
        unmerged = model(x)
        merge_adapters(model)
        torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)
        unmerge_adapters(model)
        for name, layer in adapter_layers(model).items():
            assert (layer.base_layer.weight - originals[name]).abs().max() <= 1e-5
        torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)


def test_file_round_trip_is_exact_and_survives_flipped_singular_vectors(tmp_path):
    model, x = pissa_model("vit")
    randomize_adapters(model)
    save_adapter(model, tmp_path / "pissa.safetensors")

    fresh, _ = pissa_model("vit")
    # Another machine's SVD may flip the signs of singular vector pairs: B0 A0, hence the function, is unchanged.
    with torch.no_grad():
        for layer in adapter_layers(fresh).values():
            signs = torch.where(torch.arange(layer.rank) % 2 == 0, 1.0, -1.0)
            layer.pissa_A0.mul_(signs[:, None])
            layer.pissa_B0.mul_(signs)
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "pissa.safetensors")
        assert torch.equal(fresh(x), model(x))
    saved = set(load_file(str(tmp_path / "pissa.safetensors")))
    assert any(key.endswith("pissa_A") for key in saved) and not any(key.endswith(("_A0", "_B0")) for key in saved)


def test_whole_network_load_recomputes_the_principal_part():
    # A checkpoint of the whole network loaded into one injected on other (random-init) frozen weights.
    trained, x = pissa_model("vit", seed=0)
    randomize_adapters(trained)
    other, _ = pissa_model("vit", seed=7)
    other.load_state_dict(trained.state_dict())
    with torch.no_grad():
        assert torch.equal(other(x), trained(x))


@pytest.mark.parametrize("family", ["vit", "efficientnet"])
def test_trainable_count_and_gradients(family):
    rank = 4
    model, x = pissa_model(family, rank=rank)
    layers = adapter_layers(model)
    expected = sum(
        rank * (layer.base_layer.weight[0].numel() + layer.base_layer.weight.shape[0]) for layer in layers.values()
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(model)}
    assert sum(p.numel() for p in trainable) == expected
    # Unlike LoRA's zero-init B, both factors start non-zero: both receive a gradient at the first step.
    model.train()
    model(x).square().mean().backward()
    dead = [
        name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().max() == 0)
    ]
    assert not dead


def test_rank_above_the_weight_is_refused():
    with pytest.raises(ValueError, match=r"PiSSA rank 13 exceeds min\(out, fan_in\) = 12"):
        PiSSALayer(nn.Linear(16, 12), PiSSAConfig(rank=13))
    with pytest.raises(ValueError, match="PiSSA rank 28 exceeds"):  # conv: fan_in = 3 * 3 * 3 = 27
        PiSSALayer(nn.Conv2d(3, 32, 3), PiSSAConfig(rank=28))
    PiSSALayer(nn.Conv2d(3, 32, 3), PiSSAConfig(rank=27))
    with pytest.raises(ValueError, match="rank"):
        PiSSAConfig(rank=0)
    model = TinyNet()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="rank 28 exceeds min"):  # the conv's fan_in is 27
        inject_adapters(model, "pissa", ["stem", "lin"], rank=28)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("rank, alpha", [(4, None), (3, 6.0)])
def test_initial_factors_match_peft_pissa_up_to_signs(rank, alpha):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = TinyNet().eval()
    ours = copy.deepcopy(base)
    inject_adapters(ours, "pissa", ["lin"], rank=rank, alpha=alpha)
    reference = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=["lin"], init_lora_weights="pissa"),
    ).eval()
    layer = ours.lin
    peft_layer = reference.base_model.model.lin
    peft_a, peft_b = peft_layer.lora_A["default"].weight.detach(), peft_layer.lora_B["default"].weight.detach()
    signs = torch.sign((peft_a * layer.pissa_A.detach()).sum(1))  # per singular triplet
    assert signs.abs().min() == 1
    torch.testing.assert_close(layer.pissa_A.detach() * signs[:, None], peft_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.pissa_B.detach() * signs, peft_b, rtol=1e-4, atol=1e-5)
    # Same trained factors in both: peft's residual weight + s B A is our untouched W0 + s (B A - B0 A0).
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        layer.pissa_A.add_(0.1 * torch.randn(layer.pissa_A.shape, generator=generator))
        layer.pissa_B.add_(0.1 * torch.randn(layer.pissa_B.shape, generator=generator))
        peft_layer.lora_A["default"].weight.copy_(layer.pissa_A)
        peft_layer.lora_B["default"].weight.copy_(layer.pissa_B)
        x = torch.randn(4, 3, 8, 8, generator=generator)
        assert (ours(x) - base(x)).abs().max() > 1e-3
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


def test_autocast_keeps_the_float32_delta_and_the_exact_identity_at_init():
    base, x = make_encoder("vit")
    model, _ = pissa_model("vit")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), base(x))
    randomize_adapters(model)
    with torch.no_grad():
        deltas = [layer.delta_weight() for layer in adapter_layers(model).values()]
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert all(
                torch.equal(layer.delta_weight(), d) for layer, d in zip(adapter_layers(model).values(), deltas)
            )
            output = model(x).float()
    assert (output - expected).abs().max() <= 0.05 * expected.abs().max()
