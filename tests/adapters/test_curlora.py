"""CURLoRA against a dense reference of C U R, its inverted-probability selection, and the adapter contract."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TARGETS, TinyNet, make_encoder, randomize_adapters
from safetensors.torch import load_file
from torch import nn

import medpeft.adapters.curlora  # noqa: F401  (registers "curlora")
from medpeft.adapters import (
    adapter_layers,
    adapter_parameters,
    adapter_state_dict,
    inject_adapters,
    load_adapter,
    load_adapter_state_dict,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from medpeft.adapters.curlora import CURLoRAConfig, CURLoRALayer


def curlora_model(family: str, rank: int = 4, seed: int = 0, **options) -> tuple[nn.Module, torch.Tensor]:
    model, x = make_encoder(family, seed)
    inject_adapters(model, "curlora", TARGETS[family], rank=rank, **options)
    return model, x


def reference_indices(matrix: torch.Tensor, rank: int, seed: int) -> tuple[list[int], list[int]]:
    """The documented draw, written out: p_j = (1 / ||column j||^2) / sum_k (1 / ||column k||^2), then rows."""
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for norms in (matrix.double().pow(2).sum(0), matrix.double().pow(2).sum(1)):
        probabilities = (1 / norms) / (1 / norms).sum()
        picked.append(sorted(torch.multinomial(probabilities, rank, replacement=False, generator=generator).tolist()))
    return picked[0], picked[1]


@pytest.mark.parametrize("form", ["factorised", "effective weight"])
def test_delta_matches_dense_cur_reference(form, monkeypatch):
    rank, seed = 3, 5
    if form == "effective weight":
        monkeypatch.setattr(CURLoRALayer, "prefers_activation_form", lambda self: False)
    torch.manual_seed(0)
    model = TinyNet().eval()
    weights = {name: module.weight.detach().clone() for name, module in model.named_children()}
    inject_adapters(model, "curlora", ["stem", "lin"], rank=rank, seed=seed)
    randomize_adapters(model, scale=1.0)
    generator = torch.Generator().manual_seed(3)
    for name, layer in adapter_layers(model).items():
        w0 = weights[name]
        matrix = w0.reshape(w0.shape[0], -1).double()
        cols, rows = reference_indices(matrix, rank, seed)
        assert layer.col_index.tolist() == cols and layer.row_index.tolist() == rows
        assert layer.col_index.dtype == torch.int64
        expected = (matrix[:, cols] @ layer.curlora_U.detach().double() @ matrix[rows, :]).reshape(w0.shape)
        torch.testing.assert_close(layer.delta_weight().double(), expected, rtol=1e-5, atol=1e-6)
        assert expected.abs().max() > 1e-3
        with torch.no_grad():
            if layer.is_conv:
                probe = torch.randn(2, 3, 9, 9, generator=generator)
                reference = F.conv2d(probe.double(), w0.double() + expected, layer.base_layer.bias.double(), 2, 1)
            else:
                probe = torch.randn(5, 64, generator=generator)
                reference = F.linear(probe.double(), w0.double() + expected, layer.base_layer.bias.double())
            assert layer.prefers_activation_form() == (form == "factorised")
            torch.testing.assert_close(layer(probe).double(), reference, rtol=1e-5, atol=1e-5)


def test_selection_prefers_low_norm_columns_and_rows_and_is_deterministic():
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    with torch.no_grad():
        layer.weight[:, 20:] *= 1e-3  # columns 20..39 have a millionth of the squared norm: ~1e6 times as likely
        layer.weight[:15] *= 1e-3  # rows 0..14 likewise (their columns 20.. are 1e-6 x smaller still)
    first = CURLoRALayer(copy.deepcopy(layer), CURLoRAConfig(rank=6))
    assert min(first.col_index.tolist()) >= 20 and max(first.row_index.tolist()) < 15
    again = CURLoRALayer(copy.deepcopy(layer), CURLoRAConfig(rank=6))
    assert torch.equal(first.col_index, again.col_index) and torch.equal(first.row_index, again.row_index)
    assert len(set(first.col_index.tolist())) == 6  # drawn without replacement
    other = [CURLoRALayer(copy.deepcopy(layer), CURLoRAConfig(rank=6, seed=s)).col_index for s in (1, 2, 3)]
    assert any(not torch.equal(first.col_index, index) for index in other)


@pytest.mark.parametrize("family", sorted(TARGETS))
def test_exactly_the_base_network_at_init(family):
    base, x = make_encoder(family)
    model, _ = curlora_model(family)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
        assert all(torch.count_nonzero(layer.delta_weight()) == 0 for layer in adapter_layers(model).values())


@pytest.mark.parametrize("family", ["vit", "efficientnet"])
def test_merge_equals_unmerged(family):
    model, x = curlora_model(family)
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


def test_file_round_trip_is_exact_and_holds_the_selection(tmp_path):
    model, x = curlora_model("vit")
    randomize_adapters(model, scale=1.0)
    save_adapter(model, tmp_path / "curlora.safetensors")
    fresh, _ = curlora_model("vit")
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "curlora.safetensors")
        assert torch.equal(fresh(x), model(x))
    saved = load_file(str(tmp_path / "curlora.safetensors"))
    layers = adapter_layers(model)
    for name, layer in layers.items():
        assert torch.equal(saved[f"{name}.col_index"], layer.col_index)
        assert torch.equal(saved[f"{name}.row_index"], layer.row_index)
    # Other base weights give another selection, which the loader refuses.
    other, _ = curlora_model("vit", seed=7)
    with pytest.raises(ValueError, match="base weights differ"):
        load_adapter_state_dict(other, adapter_state_dict(model))


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_trainable_count_and_gradients_reach_every_core(family):
    rank = 4
    model, x = curlora_model(family, rank=rank)
    layers = adapter_layers(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(model)}
    assert sum(p.numel() for p in trainable) == rank * rank * len(layers)
    model.train()
    model(x).square().mean().backward()
    dead = [
        name for name, layer in layers.items() if layer.curlora_U.grad is None or layer.curlora_U.grad.abs().max() == 0
    ]
    assert not dead


def test_rank_above_the_weight_is_refused():
    with pytest.raises(ValueError, match=r"CURLoRA rank 13 exceeds min\(out, fan_in\) = 12"):
        CURLoRALayer(nn.Linear(16, 12), CURLoRAConfig(rank=13))
    with pytest.raises(ValueError, match="CURLoRA rank 28 exceeds"):  # conv: fan_in = 3 * 3 * 3 = 27
        CURLoRALayer(nn.Conv2d(3, 32, 3), CURLoRAConfig(rank=28))
    with pytest.raises(ValueError, match="rank"):
        CURLoRAConfig(rank=0)
    with pytest.raises(ValueError, match="seed"):
        CURLoRAConfig(seed=-1)
    model = TinyNet()
    with pytest.raises(ValueError, match="rank 28 exceeds min"):
        inject_adapters(model, "curlora", ["stem", "lin"], rank=28)


def test_autocast_keeps_the_float32_delta_and_the_exact_identity_at_init():
    base, x = make_encoder("vit")
    model, _ = curlora_model("vit")
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
