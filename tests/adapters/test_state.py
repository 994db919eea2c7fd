"""Adapter-only state dicts: safetensors round trip, no base weights, refusal of mismatches."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import inject, make_encoder, randomize_adapters
from safetensors import safe_open
from safetensors.torch import load_file

from medpeft.adapters import adapter_state_dict, inject_adapters, load_adapter, load_adapter_state_dict, save_adapter
from medpeft.adapters.state import CONFIG_KEY


def test_round_trip_through_safetensors_is_exact(family, method, tmp_path):
    model, x = make_encoder(family)
    inject(model, family, method)
    randomize_adapters(model)
    size = save_adapter(model, tmp_path / "adapter.safetensors")

    fresh, _ = make_encoder(family)  # same base weights (same seed), fresh adapters
    inject(fresh, family, method)
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "adapter.safetensors")
        assert torch.equal(fresh(x), model(x))

    saved = load_file(str(tmp_path / "adapter.safetensors"))
    base_names = {n for n, _ in make_encoder(family)[0].named_parameters()}
    assert not base_names & set(saved) and not any("base_layer" in k for k in saved)
    adapter_numbers = sum(v.numel() for k, v in saved.items() if v.is_floating_point())
    assert adapter_numbers == sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_numbers = sum(p.numel() for p in model.parameters())
    print(f"{family}/{method}: adapter file {size} bytes, {adapter_numbers} numbers vs {base_numbers} in the model")
    # float32 tensors, a JSON header line per tensor, and the metadata (stored twice: tensor and header)
    assert size < 4 * adapter_numbers + 256 * len(saved) + 2 * saved[CONFIG_KEY].numel() + 4096
    with safe_open(str(tmp_path / "adapter.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["medpeft"])["method"] == method


def test_mismatched_options_are_refused_with_the_difference_named():
    model, _ = make_encoder("vit")
    inject_adapters(model, "lora", ["attn"], rank=4)
    state = adapter_state_dict(model)
    other, _ = make_encoder("vit")
    inject_adapters(other, "lora", ["attn"], rank=8)
    with pytest.raises(ValueError, match=r"option rank: saved 4, model 8"):
        load_adapter_state_dict(other, state)
    other, _ = make_encoder("vit")
    inject_adapters(other, "trm", ["attn"], rank=4)
    with pytest.raises(ValueError, match=r"method: saved 'lora', model 'trm'"):
        load_adapter_state_dict(other, state)
    other, _ = make_encoder("vit")
    inject_adapters(other, "lora", ["attn", "mlp"], rank=4)
    with pytest.raises(ValueError, match=r"targets"):
        load_adapter_state_dict(other, state)


def test_tcurlora_refuses_other_base_weights():
    model, _ = make_encoder("vit", seed=0)
    inject_adapters(model, "tcurlora", ["attn", "mlp"], rank=2)
    state = adapter_state_dict(model)
    other, _ = make_encoder("vit", seed=7)
    inject_adapters(other, "tcurlora", ["attn", "mlp"], rank=2)
    with pytest.raises(ValueError, match="base weights differ"):
        load_adapter_state_dict(other, state)


def test_state_dict_without_metadata_or_model_without_adapters():
    model, _ = make_encoder("vit")
    inject_adapters(model, "lora", ["attn"], rank=4)
    state = adapter_state_dict(model)
    with pytest.raises(ValueError, match=CONFIG_KEY):
        load_adapter_state_dict(model, {k: v for k, v in state.items() if k != CONFIG_KEY})
    plain, _ = make_encoder("vit")
    with pytest.raises(ValueError, match="no adapters"):
        load_adapter_state_dict(plain, state)
