"""Benchmark records and their files: ``results.json`` (every record, the machine) and ``results.md`` (the table).

One record per (encoder, method, device, ``grad_checkpointing``) with the keys the README and issue 11 name:
``trainable_params``, ``adapter_params``, ``step_time_s`` (median) with ``step_time_iqr_s``,
``step_time_ratio_vs_decoder_only``, ``step_time_ratio_vs_peft_lora``, ``peak_mem_mb``, ``peak_mem_ratio_vs_full``,
``merged_latency_s`` and ``merged_latency_ratio_vs_plain`` (the plain network is ``decoder_only``'s: no adapter at
all); and those issue 22 adds: ``grad_checkpointing`` (the encoder's blocks recomputed in the backward pass),
``step_time_ratio_vs_no_checkpointing`` and ``peak_mem_ratio_vs_no_checkpointing`` (against the same method without
it). Every reference is a run without checkpointing: ``peak_mem_ratio_vs_full`` of a checkpointed LoRA compares it
with full fine-tuning as it is usually run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from medpeft.benchmark.setups import variant_key
from medpeft.io import write_text_atomic

__all__ = ["build_records", "machine_facts", "render_markdown", "write_results"]


def machine_facts(device: torch.device) -> dict[str, Any]:
    """Where the figures were measured."""
    facts: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def build_records(
    encoder: str,
    device: torch.device,
    settings: dict[str, Any],
    variants: list[tuple[str, bool]],
    params: dict[str, tuple[int, int]],
    steps: dict[str, list[float]],
    merged: dict[str, list[float]],
    memory: dict[str, float | None],
) -> list[dict[str, Any]]:
    """One record per ``(method, grad_checkpointing)`` variant of one encoder.

    ``params``, ``steps``, ``merged`` and ``memory`` are keyed by :func:`~medpeft.benchmark.setups.variant_key`;
    ratios are against the variants present without checkpointing (``None`` where one is absent).
    """
    step = {key: statistics.median(v) for key, v in steps.items()}
    latency = {key: statistics.median(v) for key, v in merged.items()}
    records = []
    for method, checkpointed in variants:
        key = variant_key(method, checkpointed)
        trainable, adapter = params[key]
        records.append(
            {
                "encoder": encoder,
                "method": method,
                "grad_checkpointing": checkpointed,
                "device": str(device),
                **settings,
                "trainable_params": trainable,
                "adapter_params": adapter,
                "step_time_s": step[key],
                "step_time_iqr_s": _iqr(steps[key]),
                "step_time_ratio_vs_decoder_only": _ratio(step[key], step.get("decoder_only")),
                "step_time_ratio_vs_peft_lora": _ratio(step[key], step.get("peft_lora")),
                "step_time_ratio_vs_no_checkpointing": _ratio(step[key], step.get(method)),
                "peak_mem_mb": memory.get(key),
                "peak_mem_ratio_vs_full": _ratio(memory.get(key), memory.get("full")),
                "peak_mem_ratio_vs_no_checkpointing": _ratio(memory.get(key), memory.get(method)),
                "merged_latency_s": latency.get(key),
                "merged_latency_ratio_vs_plain": _ratio(latency.get(key), latency.get("decoder_only")),
            }
        )
    return records


def build_form_records(encoder: str, timings: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """One record per method and form policy (:mod:`medpeft.benchmark.forms`), with the ratio to the rule's step."""
    records = []
    for method, steps in timings.items():
        rule = statistics.median(steps["rule"])
        for policy, times in steps.items():
            step = statistics.median(times)
            records.append(
                {
                    "encoder": encoder,
                    "method": method,
                    "policy": policy,
                    "step_time_s": step,
                    "step_time_iqr_s": _iqr(times),
                    "step_time_ratio_vs_rule": step / rule,
                }
            )
    return records


def _cell(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render_markdown(
    records: list[dict[str, Any]], machine: dict[str, Any], forms: list[dict[str, Any]] | None = None
) -> str:
    """The results table, one row per record, the machine it ran on, and the forms table when given."""
    header = [
        "encoder", "method", "grad ckpt", "trainable", "adapter", "step (s, median ± IQR)", "x decoder_only",
        "x peft LoRA", "x no ckpt", "peak mem (MiB)", "x full", "merged fwd x plain",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for r in records:
        cells = [
            r["encoder"],
            r["method"],
            "yes" if r["grad_checkpointing"] else "no",
            f"{r['trainable_params']:,d}",
            f"{r['adapter_params']:,d}",
            f"{r['step_time_s']:.3f} ± {r['step_time_iqr_s']:.3f}",
            _cell(r["step_time_ratio_vs_decoder_only"], ".2f"),
            _cell(r["step_time_ratio_vs_peft_lora"], ".2f"),
            _cell(r["step_time_ratio_vs_no_checkpointing"], ".2f"),
            _cell(r["peak_mem_mb"], ".0f"),
            _cell(r["peak_mem_ratio_vs_full"], ".2f"),
            _cell(r["merged_latency_ratio_vs_plain"], ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    first = records[0]
    setting = (
        f"{first['img_size']} px, batch {first['batch_size']}, {first['iters']} timed rounds after {first['warmup']}"
    )
    where = ", ".join(f"{k} {v}" for k, v in machine.items())
    text = f"Setting: {setting}. Machine: {where}.\n\n"
    if any(r["grad_checkpointing"] for r in records):
        text += "grad ckpt: encoder blocks recomputed in the backward pass. Every ratio is against plain runs.\n\n"
    text += "\n".join(lines) + "\n"
    if forms:
        text += (
            "\nForward forms of the tensor adapters (same setting): every layer in its effective-weight form, every "
            "layer that may in its activation form, and each layer's own rule (what training uses).\n\n"
            "| encoder | method | forms | step (s, median ± IQR) | x rule |\n| --- | --- | --- | --- | --- |\n"
        )
        for r in forms:
            text += (
                f"| {r['encoder']} | {r['method']} | {r['policy']} | {r['step_time_s']:.3f} ± {r['step_time_iqr_s']:.3f}"
                f" | {r['step_time_ratio_vs_rule']:.2f} |\n"
            )
    return text


def write_results(
    records: list[dict[str, Any]],
    machine: dict[str, Any],
    out: str | os.PathLike[str],
    forms: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """Write ``<out>.json`` and ``<out>.md`` atomically; return their paths."""
    base = Path(out)
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    content = {"machine": machine, "records": records, "forms": forms or []}
    write_text_atomic(json_path, json.dumps(content, indent=2) + "\n")
    write_text_atomic(md_path, render_markdown(records, machine, forms))
    return [json_path, md_path]
