"""The method registry: every shipped method comes from one listed file, its facts are consistent, the config and the
sweep accept it with nothing else changed, and the README's table is the registry's."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from medpeft.adapters import ADAPTERS
from medpeft.adapters.methods import METHOD_MODULES
from medpeft.adapters.table import markdown_table
from medpeft.experiment.config import ConfigError, load_config, method_names
from medpeft.training.sweep import SWEEP_METHODS

REPO = Path(__file__).resolve().parents[2]


def test_every_method_comes_from_a_listed_module_and_every_listed_module_registers_one():
    origins = {method.apply.__module__ for method in ADAPTERS.values()}
    assert origins == {f"medpeft.adapters.{module}" for module in METHOD_MODULES}
    assert all(f"medpeft.adapters.{module}" in sys.modules for module in METHOD_MODULES)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_registry_facts_are_consistent(name):
    method = ADAPTERS[name]
    fields = {field.name for field in dataclasses.fields(method.config_cls)}
    assert method.size_knob is None or method.size_knob in fields
    assert method.summary and method.source in ("medpeft", "peft")
    assert name in method_names() and name in SWEEP_METHODS


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_the_config_accepts_every_method_with_a_budget(name):
    cfg = load_config(REPO / "configs" / "demo_lora.yaml", [f"adapter.method={name}", "adapter.budget=1000"])
    assert cfg.adapter.method == name and cfg.adapter.budget == 1000


def test_unknown_options_name_the_key_and_the_method():
    with pytest.raises(
        ConfigError, match=r"'adapter.options.bottlenek' is not an option of houlsby.*did you mean 'bottleneck'"
    ):
        load_config(REPO / "configs" / "demo_lora.yaml", ["adapter.method=houlsby", "adapter.options={bottlenek: 8}"])
    with pytest.raises(
        ConfigError, match=r"'adapter.options.rank' is set in adapter.options; set adapter.rank instead"
    ):
        load_config(REPO / "configs" / "demo_lora.yaml", ["adapter.method=lora", "adapter.options={rank: 8}"])


def test_readme_holds_the_methods_table():
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, "README's methods table is stale: python -m medpeft.adapters.table"


@pytest.mark.parametrize("name", ["lora", "adaptformer", "vpt"])
def test_injected_modules_follow_the_models_mode(name):
    import timm

    from medpeft.adapters import adapter_modules, inject_adapters

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0).eval()
    targets = ADAPTERS[name].default_targets or ["attn"]
    inject_adapters(model, name, list(targets), **{ADAPTERS[name].size_knob: 2}, dropout=0.5)
    assert all(not module.training for module in adapter_modules(model).values())
