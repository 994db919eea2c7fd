"""BitFit: only the network's own biases train; they are what the adapter file holds; merging changes nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_encoder, randomize_adapters
from torch import nn

import medpeft.adapters.bitfit  # noqa: F401  (registers "bitfit")
from medpeft.adapters import (
    adapter_parameters,
    get_adapter_method,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
)
from medpeft.adapters.inject import ADAPTER_RECORD_ATTRIBUTE, trained_base_parameters


def _injected(family: str, targets=("all",), seed: int = 0):
    model, x = make_encoder(family, seed)
    names = inject_adapters(model, "bitfit", list(targets))
    return model, x, names


def _train(model: nn.Module, x: torch.Tensor, steps: int = 2) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()


def test_vit_trains_exactly_its_bias_parameters():
    model, _, names = _injected("vit")
    biases = {n for n, _ in model.named_parameters() if n.rpartition(".")[2] == "bias"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == biases
    assert set(trained_base_parameters(model)) == biases
    assert names == sorted(n.rpartition(".")[0] for n in biases)  # one bias per matched module
    assert sum(p.numel() for p in adapter_parameters(model)) == sum(model.get_submodule(n).bias.numel() for n in names)
    method = get_adapter_method("bitfit")
    assert method.size_knob is None and method.merge_refusal is None and method.default_targets == ("all",)


def test_cnn_without_conv_biases_trains_the_batchnorm_shifts():
    model, _, names = _injected("resnet")
    trained = trained_base_parameters(model)
    bn = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert set(trained) == {f"{n}.bias" for n in bn} | {"fc.bias"}  # the convolutions have no bias
    assert sum(p.numel() for p in trained.values()) == sum(model.get_submodule(n).num_features for n in bn) + 8
    assert not any(isinstance(model.get_submodule(n), nn.Conv2d) for n in names)


def test_separate_qkv_biases_of_timm_attention_train():
    model, _, _ = _injected("beit")
    trained = set(trained_base_parameters(model))
    assert {"blocks.0.attn.q_bias", "blocks.0.attn.v_bias"} <= trained
    assert not any("k_bias" in n for n in trained)  # BEiT's zero k_bias is a buffer
    assert not any("relative_position_bias_table" in n for n in trained)  # position embeddings, not bias terms


def test_trained_model_is_the_plain_model_with_the_trained_biases():
    base, x = make_encoder("vit")
    model = copy.deepcopy(base)
    with torch.no_grad():
        expected = base(x)
    inject_adapters(model, "bitfit", ["all"])
    with torch.no_grad():
        assert torch.equal(model(x), expected)  # nothing is wrapped: unchanged at init, exactly
    _train(model, x)
    trained = dict(model.named_parameters())
    for name, parameter in base.named_parameters():
        if name.endswith(".bias"):
            assert not torch.equal(trained[name], parameter), name
        else:
            assert torch.equal(trained[name], parameter), name
    # The hand-written reference: the untouched network given those biases.
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith(".bias"):
                parameter.copy_(trained[name])
        out = model(x)
        assert (out - expected).abs().max() > 1e-3
        assert torch.equal(out, reference(x))
        merge_adapters(model)  # a no-op: the biases are the network's own
        assert torch.equal(model(x), out)
        merge_adapters(model, unload=True)
        assert not hasattr(model, ADAPTER_RECORD_ATTRIBUTE) and torch.equal(model(x), out)


def test_adapter_file_holds_the_trained_biases(tmp_path):
    model, x, _ = _injected("resnet")
    randomize_adapters(model, scale=0.5)
    save_adapter(model, tmp_path / "bitfit.safetensors")
    fresh, _, _ = _injected("resnet")
    frozen = {n: p.clone() for n, p in fresh.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "bitfit.safetensors")
        assert torch.equal(fresh(x), model(x))
    for name, parameter in trained_base_parameters(fresh).items():
        assert torch.equal(parameter, dict(model.named_parameters())[name])
    for name, parameter in fresh.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name  # the frozen rest untouched


def test_gradients_reach_every_bias_and_nothing_else():
    model, x, _ = _injected("resnet")
    model(x).square().mean().backward()
    trained = trained_base_parameters(model)
    dead = [n for n, p in trained.items() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, f"biases without gradient: {dead}"
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trained)


def test_modules_without_a_bias_are_refused_unless_under_all():
    model, _ = make_encoder("resnet")
    with pytest.raises(ValueError, match=r"'layer1.0.conv1', a Conv2d without a bias parameter"):
        inject_adapters(model, "bitfit", ["layer1.0.conv1"])
    with pytest.raises(ValueError, match=r"'layer1.0', a BasicBlock without a bias parameter"):
        inject_adapters(model, "bitfit", ["layer1.0"])
    names = inject_adapters(model, "bitfit", ["layer1.0.bn*", "fc"])
    assert names == ["fc", "layer1.0.bn1", "layer1.0.bn2"]
    assert set(trained_base_parameters(model)) == {"fc.bias", "layer1.0.bn1.bias", "layer1.0.bn2.bias"}
    # blocks restricts "all" to the residual blocks
    other, _ = make_encoder("resnet")
    inject_adapters(other, "bitfit", ["all"], blocks=[0])
    assert set(trained_base_parameters(other)) == {"layer1.0.bn1.bias", "layer1.0.bn2.bias"}
