"""The command behind ``scripts/benchmark.py``: build every method's network per encoder, time the training steps
interleaved, measure peak memory in fresh processes, time merged inference, write the results.

Example:
    .. code-block:: bash

        python scripts/benchmark.py                       # the four encoders at 224 px, all methods
        python scripts/benchmark.py --quick               # a smoke test: vit_tiny at 64 px, 2 rounds
        python scripts/benchmark.py --encoders vit_base_patch16_224 --methods full lora trm tcurlora \
            --grad-checkpointing                          # each method also with the encoder checkpointed
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medpeft.benchmark.forms import form_step_times
from medpeft.benchmark.measure import interleaved_step_times, merged_latency, peak_training_memory_mb
from medpeft.benchmark.report import build_form_records, build_records, machine_facts, render_markdown, write_results
from medpeft.benchmark.setups import METHODS, build_setup, variant_key

__all__ = ["build_parser", "main"]

ENCODERS: tuple[str, ...] = (
    "vit_tiny_patch16_224",
    "vit_base_patch16_224",
    "swin_tiny_patch4_window7_224",
    "resnet50",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``scripts/benchmark.py``."""
    parser = argparse.ArgumentParser(
        prog="benchmark.py",
        description=(
            "Time training steps (whole segmenter, real loss, AdamW step), peak training memory and merged "
            "inference of full, decoder_only, our LoRA, peft's LoRA, TRM and tCURLoRA; writes <out>.json and "
            "<out>.md (default benchmarks/results)."
        ),
    )
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), metavar="NAME", help="timm encoders")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on a CPU, 32 on a GPU")
    parser.add_argument("--iters", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-method peak-memory processes")
    parser.add_argument(
        "--no-forms", action="store_true", help="skip timing TRM / tCURLoRA with every layer forced into one form"
    )
    parser.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="also measure every method but decoder_only with the encoder's blocks recomputed in the backward pass",
    )
    parser.add_argument("--out", default="benchmarks/results", help="output path without suffix")
    parser.add_argument("--quick", action="store_true", help="smoke test: vit_tiny, 64 px, batch 2, 1 + 1 rounds")
    return parser


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; return its records (also written to ``--out``)."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.encoders, args.img_size, args.batch_size, args.iters, args.warmup = (
            ["vit_tiny_patch16_224"],
            64,
            2,
            1,
            1,
        )
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    batch_size = args.batch_size or (32 if device.type == "cuda" else 8)
    methods = [m for m in METHODS if m in args.methods]
    # (method, encoder checkpointed); decoder_only's frozen encoder keeps no activations to recompute
    variants = [(m, False) for m in methods]
    if args.grad_checkpointing:
        variants += [(m, True) for m in methods if m != "decoder_only"]
    settings = {"img_size": args.img_size, "batch_size": batch_size, "iters": args.iters, "warmup": args.warmup}
    records: list[dict[str, Any]] = []
    forms: list[dict[str, Any]] = []
    for encoder in tqdm(args.encoders, desc="encoders"):
        setups = [build_setup(encoder, m, args.img_size, device, grad_checkpointing=c) for m, c in variants]
        params = {s.key: (s.trainable_params, s.adapter_params) for s in setups}
        steps = interleaved_step_times(setups, batch_size, args.img_size, args.iters, args.warmup)
        plain = [s for s in setups if not s.grad_checkpointing]  # checkpointing changes nothing at inference
        merged = merged_latency(plain, batch_size, args.img_size, args.iters, args.warmup)
        del setups, plain
        memory: dict[str, float | None] = {}
        for method, checkpointed in variants:
            memory[variant_key(method, checkpointed)] = (
                None
                if args.no_memory
                else peak_training_memory_mb(
                    encoder, method, args.img_size, batch_size, device, grad_checkpointing=checkpointed
                )
            )
        records += build_records(encoder, device, settings, variants, params, steps, merged, memory)
        if not args.no_forms:
            timings = form_step_times(encoder, methods, args.img_size, batch_size, args.iters, args.warmup, device)
            forms += build_form_records(encoder, timings)
    machine = machine_facts(device)
    paths = write_results(records, machine, Path(args.out), forms)
    print(render_markdown(records, machine, forms), end="")
    print(f"\nwritten to {', '.join(map(str, paths))}")
    return records
