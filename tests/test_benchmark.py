"""The benchmark (``scripts/benchmark.py``): records with the promised keys, peft's LoRA on exactly our LoRA's
modules, ratios consistent with the timings, and a CPU peak-memory measure that sees what training allocates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medpeft.adapters.tcurlora import TCURLoRALayer
from medpeft.adapters.trm import TRMLayer
from medpeft.benchmark import build_setup, main
from medpeft.benchmark.forms import FORM_POLICIES, force_form
from medpeft.benchmark.measure import peak_training_memory_mb

KEYS = {
    "encoder", "method", "device", "trainable_params", "adapter_params", "step_time_s",
    "step_time_ratio_vs_decoder_only", "step_time_ratio_vs_peft_lora", "peak_mem_ratio_vs_full",
    "merged_latency_ratio_vs_plain",
}  # fmt: skip


def test_quick_benchmark_writes_consistent_records(tmp_path: Path) -> None:
    records = main(["--quick", "--no-memory", "--out", str(tmp_path / "results")])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["records"] == json.loads(json.dumps(records)) and saved["machine"]["device"] == "cpu"
    assert "| vit_tiny_patch16_224 | tcurlora |" in (tmp_path / "results.md").read_text()
    by_method = {r["method"]: r for r in records}
    assert set(by_method) == {"full", "decoder_only", "lora", "peft_lora", "trm", "tcurlora"}
    assert all(KEYS <= set(r) for r in records)
    assert by_method["lora"]["adapter_params"] == by_method["peft_lora"]["adapter_params"] > 0
    assert by_method["decoder_only"]["step_time_ratio_vs_decoder_only"] == 1.0
    lora = by_method["lora"]
    assert lora["step_time_ratio_vs_peft_lora"] == pytest.approx(
        lora["step_time_s"] / by_method["peft_lora"]["step_time_s"]
    )
    assert by_method["full"]["trainable_params"] > by_method["decoder_only"]["trainable_params"]
    forms = {(r["method"], r["policy"]): r for r in saved["forms"]}
    assert set(forms) == {(m, p) for m in ("trm", "tcurlora") for p in FORM_POLICIES}
    assert all(forms[m, "rule"]["step_time_ratio_vs_rule"] == 1.0 for m in ("trm", "tcurlora"))
    assert "| vit_tiny_patch16_224 | trm | activation |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("method", ["trm", "tcurlora"])
def test_force_form_switches_every_layer_and_back(method: str) -> None:
    setup = build_setup("vit_tiny_patch16_224", method, 32, torch.device("cpu"))
    layers = [m for m in setup.net.modules() if isinstance(m, (TRMLayer, TCURLoRALayer))]

    def chosen() -> set[bool]:
        return {layer.prefers_activation_form(torch.empty(2, 5, layer.in_features)) for layer in layers}

    rule = chosen()
    assert force_form(setup.net, "dense") == len(layers) > 0 and chosen() == {False}
    force_form(setup.net, "activation")
    assert chosen() == {True}  # plain nn.Linear layers: all may
    force_form(setup.net, "rule")
    assert chosen() == rule


def test_peft_lora_wraps_the_modules_our_lora_wraps() -> None:
    ours = build_setup("vit_tiny_patch16_224", "lora", 32, torch.device("cpu"))
    theirs = build_setup("vit_tiny_patch16_224", "peft_lora", 32, torch.device("cpu"))
    ours_names = {n.removesuffix(".lora_A") for n, _ in ours.net.encoder.named_modules() if n.endswith(".lora_A")}
    peft_names = {n.removesuffix(".lora_A") for n, _ in theirs.net.encoder.named_modules() if n.endswith(".lora_A")}
    assert ours_names == peft_names and len(ours_names) == 4 * 12


def test_cpu_peak_memory_sees_the_optimizer_state_of_full_finetuning() -> None:
    full = peak_training_memory_mb("vit_tiny_patch16_224", "full", 32, 2, torch.device("cpu"))
    frozen = peak_training_memory_mb("vit_tiny_patch16_224", "decoder_only", 32, 2, torch.device("cpu"))
    # full adds gradients and two AdamW moments for 5.5 M encoder weights: 3 x 4 bytes x 5.5 M = 63 MiB
    assert full - frozen > 40


def test_grad_checkpointing_rows_beside_the_plain_ones(tmp_path: Path) -> None:
    flags = ["--quick", "--no-memory", "--no-forms", "--grad-checkpointing"]
    records = main([*flags, "--methods", "full", "decoder_only", "lora", "--out", str(tmp_path / "results")])
    rows = {(r["method"], r["grad_checkpointing"]): r for r in records}
    assert set(rows) == {("full", False), ("decoder_only", False), ("lora", False), ("full", True), ("lora", True)}
    for method in ("full", "lora"):
        plain, checkpointed = rows[method, False], rows[method, True]
        assert plain["step_time_ratio_vs_no_checkpointing"] == 1.0
        assert checkpointed["trainable_params"] == plain["trainable_params"]
        # every ratio is against a run without checkpointing
        assert checkpointed["step_time_ratio_vs_no_checkpointing"] == pytest.approx(
            checkpointed["step_time_s"] / plain["step_time_s"]
        )
        assert checkpointed["step_time_ratio_vs_decoder_only"] == pytest.approx(
            checkpointed["step_time_s"] / rows["decoder_only", False]["step_time_s"]
        )
        assert checkpointed["merged_latency_s"] is None  # inference is the plain row's
    assert "| vit_tiny_patch16_224 | lora | yes |" in (tmp_path / "results.md").read_text()
