"""LoTR against a dense reference of A G_l B^T and an HOSVD recomputed here, and the adapter contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TARGETS, make_encoder, randomize_adapters
from safetensors.torch import load_file
from torch import nn

import medpeft.adapters.lotr  # noqa: F401  (registers "lotr")
from medpeft.adapters import (
    adapter_layers,
    adapter_parameters,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from medpeft.adapters.lotr import GROUPS_ATTRIBUTE, LoTRConfig, LoTRGroup, LoTRLayer


def lotr_model(family: str, rank: int = 4, seed: int = 0, **options) -> tuple[nn.Module, torch.Tensor]:
    model, x = make_encoder(family, seed)
    inject_adapters(model, "lotr", TARGETS[family], rank=rank, **options)
    return model, x


def groups_of(model: nn.Module) -> dict[str, LoTRGroup]:
    return dict(getattr(model, GROUPS_ATTRIBUTE).items())


def top_left_singular_vectors(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    return torch.linalg.svd(matrix.float(), full_matrices=False).U[:, :rank].double()


@pytest.mark.parametrize("family", ["vit", "efficientnet"])
def test_factors_are_the_hosvd_and_deltas_match_dense_reference(family, monkeypatch):
    rank = 3
    base, _ = make_encoder(family)
    weights = {
        name: module.weight.detach().clone() for name, module in base.named_modules() if hasattr(module, "weight")
    }
    model, _ = lotr_model(family, rank=rank)
    layers = adapter_layers(model)
    groups = groups_of(model)
    # One group per weight shape, members in traversal order, every adapted layer in exactly one group.
    shapes = {tuple(layer.base_layer.weight.shape) for layer in layers.values()}
    assert len(groups) == len(shapes)
    assert sorted(name for group in groups.values() for name in group.members) == sorted(layers)
    if family == "vit":
        assert all(len(group.members) == 12 for group in groups.values())  # qkv, proj, fc1, fc2 of 12 blocks

    randomize_adapters(model, scale=1.0)
    generator = torch.Generator().manual_seed(3)
    for group in groups.values():
        stacked = torch.stack([weights[name].reshape(weights[name].shape[0], -1).double() for name in group.members])
        n, out, fan_in = stacked.shape
        a, b = group.lotr_A.double(), group.lotr_B.double()
        assert a.shape == (out, rank) and b.shape == (fan_in, rank)
        # Compared as projectors: singular vectors are defined up to sign.
        expected_a = top_left_singular_vectors(stacked.permute(1, 0, 2).reshape(out, n * fan_in), rank)
        expected_b = top_left_singular_vectors(stacked.permute(2, 0, 1).reshape(fan_in, n * out), rank)
        torch.testing.assert_close(a @ a.T, expected_a @ expected_a.T, rtol=0, atol=1e-4)
        torch.testing.assert_close(b @ b.T, expected_b @ expected_b.T, rtol=0, atol=1e-4)
        torch.testing.assert_close(a.T @ a, torch.eye(rank, dtype=torch.float64), rtol=0, atol=1e-6)

        for name in group.members:
            layer = layers[name]
            w0 = weights[name]
            expected = (a @ layer.lotr_G.detach().double() @ b.T).reshape(w0.shape)
            assert expected.abs().max() > 1e-3
            torch.testing.assert_close(layer.delta_weight().double(), expected, rtol=1e-5, atol=1e-6)
        # The layer's forward in both forms against W0 + delta applied by hand (one member per group).
        layer, w0 = layers[group.members[-1]], weights[group.members[-1]]
        with torch.no_grad():
            if layer.is_conv:
                conv = layer.base_layer
                probe = torch.randn(2, w0.shape[1], 7, 7, generator=generator)
                reference = F.conv2d(probe, w0 + layer.delta_weight(), conv.bias, conv.stride, conv.padding)
            else:
                probe = torch.randn(5, w0.shape[1], generator=generator)
                reference = F.linear(probe, w0 + layer.delta_weight(), layer.base_layer.bias)
            torch.testing.assert_close(layer(probe), reference, rtol=1e-4, atol=1e-5)
            flipped = not layer.prefers_activation_form()
            with monkeypatch.context() as patch:
                patch.setattr(LoTRLayer, "prefers_activation_form", lambda self, flipped=flipped: flipped)
                torch.testing.assert_close(layer(probe), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", sorted(TARGETS))
def test_exactly_the_base_network_at_init(family):
    base, x = make_encoder(family)
    model, _ = lotr_model(family)
    layers = adapter_layers(model)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
        assert all(torch.count_nonzero(layer.delta_weight()) == 0 for layer in layers.values())
    # Groups hold one full weight shape each: ResNet's k x k convolutions of one stage share their factors.
    for group in groups_of(model).values():
        assert len({tuple(layers[name].base_layer.weight.shape) for name in group.members}) == 1
    assert any(len(group.members) > 1 for group in groups_of(model).values())


@pytest.mark.parametrize("family", ["vit", "efficientnet"])
def test_merge_equals_unmerged_and_unload_removes_the_groups(family):
    model, x = lotr_model(family)
    randomize_adapters(model, scale=1.0)
    originals = {name: layer.base_layer.weight.detach().clone() for name, layer in adapter_layers(model).items()}
    with torch.no_grad():
        unmerged = model(x)
        assert (unmerged - make_encoder(family)[0](x)).abs().max() > 1e-3
        merge_adapters(model)
        torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)
        unmerge_adapters(model)
        for name, layer in adapter_layers(model).items():
            assert (layer.base_layer.weight - originals[name]).abs().max() <= 1e-5
        torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)
        merge_adapters(model, unload=True)
        assert not hasattr(model, GROUPS_ATTRIBUTE) and not adapter_layers(model)
        torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train_factors", [False, True])
def test_file_round_trip_restores_the_saved_factors(train_factors, tmp_path):
    model, x = lotr_model("vit", train_factors=train_factors)
    randomize_adapters(model, scale=1.0)
    save_adapter(model, tmp_path / "lotr.safetensors")
    saved = load_file(str(tmp_path / "lotr.safetensors"))
    for name, group in groups_of(model).items():
        assert torch.equal(saved[f"{GROUPS_ATTRIBUTE}.{name}.lotr_A"], group.lotr_A.detach())
        assert torch.equal(saved[f"{GROUPS_ATTRIBUTE}.{name}.lotr_B"], group.lotr_B.detach())

    # A second model whose HOSVD came out with other signs (another machine): the file's A, B must win.
    fresh, _ = lotr_model("vit", train_factors=train_factors)
    with torch.no_grad():
        for group in groups_of(fresh).values():
            group.lotr_A[:, 0].neg_()
            group.lotr_B[:, 1].neg_()
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "lotr.safetensors")
        for name, group in groups_of(fresh).items():
            assert torch.equal(group.lotr_A, groups_of(model)[name].lotr_A)
            assert torch.equal(group.lotr_B, groups_of(model)[name].lotr_B)
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("train_factors", [False, True])
def test_trainable_count_and_gradients_reach_every_core(train_factors):
    rank = 4
    model, x = lotr_model("vit", rank=rank, train_factors=train_factors)
    layers, groups = adapter_layers(model), groups_of(model)
    expected = rank * rank * len(layers)
    if train_factors:
        for layer in (layers[group.members[0]] for group in groups.values()):
            expected += (layer.base_layer.weight.shape[0] + layer.base_layer.weight[0].numel()) * rank
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(model)}
    assert sum(p.numel() for p in trainable) == expected
    assert all(isinstance(g.lotr_A, nn.Parameter) == train_factors for g in groups.values())

    model.train()
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    for _ in range(2):  # step 0 moves the zero cores; then the shared factors (if trained) get gradients too
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    dead = [name for name, layer in layers.items() if layer.lotr_G.grad is None or layer.lotr_G.grad.abs().max() == 0]
    assert not dead
    for group in groups.values():
        for factor in (group.lotr_A, group.lotr_B):
            assert (factor.grad is not None and factor.grad.abs().max() > 0) == train_factors


def test_rank_above_the_weight_is_refused():
    with pytest.raises(ValueError, match=r"LoTR rank 13 exceeds min\(out, fan_in\) = 12"):
        LoTRGroup(torch.randn(2, 16, 12), 13, ["a", "b"])
    model, _ = make_encoder("vit")
    with pytest.raises(ValueError, match=r"LoTR rank 193 exceeds min\(out, fan_in\) = 192"):
        inject_adapters(model, "lotr", ["attn"], rank=193)
    assert not hasattr(model, GROUPS_ATTRIBUTE) and not adapter_layers(model)
    with pytest.raises(ValueError, match="rank"):
        LoTRConfig(rank=0)
    with pytest.raises(ValueError, match="train_factors"):
        LoTRConfig(train_factors="yes")


def test_autocast_keeps_the_float32_delta_and_the_exact_identity_at_init():
    base, x = make_encoder("vit")
    model, _ = lotr_model("vit")
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
