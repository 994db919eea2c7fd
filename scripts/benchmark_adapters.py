#!/usr/bin/env python
"""Benchmark the adapter methods on a timm ViT encoder and compare the computation strategies of METHODS.md.

Usage:
    python scripts/benchmark_adapters.py                      # ViT-B/16 at 224, batch 8, all methods
    python scripts/benchmark_adapters.py --model vit_tiny_patch16_224 --img-size 128 --batch-size 4 --iters 3
    python scripts/benchmark_adapters.py --methods lora tcurlora --json runs/bench.json

Three parts, each printed as a Markdown table (see docs/benchmarks.md for what every column means):

1. Per method (``none``: frozen encoder; ``full``: full fine-tuning; ``lora`` rank 8; ``trm`` rank 2 order 3;
   ``tcurlora`` rank 1; adapters on the ``attn`` and ``mlp`` presets of the encoder alone, no decoder): trainable
   parameters, training-step time (forward + backward), eval forward time, forward time after ``merge_adapters``,
   and peak memory of the training steps. Every method runs in a fresh process, so that peak memory (and
   allocator state) does not leak from one method into the next.
2. TRM: the package's "materialised" forward (``W0 T + Delta`` built once, one ``F.linear``) against the
   "per-token" one (``T`` applied to the activations, then the base layer, plus ``Delta x``), on the ViT layer
   shapes for widths 192/384/768 with 197 tokens per image.
3. tCURLoRA: the package's "materialised" forward (``irfft(C dU R)`` once per group, then ``W0 + delta`` per
   member, each member indexing its slice as the package does), the same with the delta split by one ``unbind``,
   and the "low-rank activation" form that never builds a delta, on the groups of ``--model``; the low-rank form
   is first checked to give the same ``Delta_m x`` as the materialised delta.

All timings are medians over ``--iters`` timed iterations after ``--warmup`` untimed ones, in float32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

# Let the script run from a plain checkout (without `pip install -e .`): put the repository root on the path.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from medpeft.adapters import adapter_parameters, inject_adapters, merge_adapters, tcurlora_groups  # noqa: E402
from medpeft.adapters.tcurlora import TCURGroup, frequency_weights  # noqa: E402
from medpeft.adapters.trm import TRMConfig, TRMLayer  # noqa: E402
from medpeft.io import write_text_atomic  # noqa: E402

__all__ = ["main"]

METHODS = ("none", "full", "lora", "trm", "tcurlora")
METHOD_OPTIONS: dict[str, dict[str, int]] = {
    "lora": {"rank": 8},
    "trm": {"rank": 2, "order": 3},
    "tcurlora": {"rank": 1},
}
TARGETS = ["attn", "mlp"]
TRM_WIDTHS = (192, 384, 768)  # ViT-Ti, ViT-S, ViT-B
VIT_TOKENS = 197  # 14 x 14 patches + the class token of a /16 ViT at 224
ADAPTER_NOISE = 0.02  # adapters start at a zero delta; perturb them so the equality checks mean something


@dataclass(frozen=True)
class Settings:
    """What every measurement needs; picklable so it can go to a worker process."""

    model: str
    img_size: int
    batch_size: int
    device: str
    iters: int
    warmup: int


# ----------------------------------------------------------------------------------------------- helpers


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock time covers it; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Median wall-clock time of ``fn()`` in milliseconds over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rel: float = 1e-4) -> float:
    """Raise unless ``actual`` matches ``expected`` to ``rel`` of its largest entry; return the max abs diff."""
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    if not torch.allclose(actual, expected, rtol=rel, atol=rel * max(scale, 1e-12)):
        raise AssertionError(f"{what}: max abs diff {diff:.3g} exceeds {rel:g} x max |value| {scale:.3g}")
    return diff


def perturb_(parameters: Sequence[nn.Parameter], seed: int) -> None:
    """Add ``N(0, ADAPTER_NOISE^2)`` noise in place, so that every adapter has a non-zero delta."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(noise.to(parameter.device) * ADAPTER_NOISE)


def zero_grad(tensors: Sequence[torch.Tensor]) -> None:
    """Drop gradients (``set_to_none``) so that no iteration pays for accumulating into the last one's."""
    for tensor in tensors:
        tensor.grad = None


def rss_mib() -> float | None:
    """Current resident set size of this process in MiB (Linux ``/proc``); ``None`` elsewhere."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return None
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mib() -> float:
    """High-water mark of this process's resident set size in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def create_encoder(settings: Settings) -> nn.Module:
    """The timm ViT with no classifier head (``num_classes=0``): what the segmenters adapt, minus the decoder."""
    return timm.create_model(settings.model, pretrained=False, img_size=settings.img_size, num_classes=0)


def tokens_per_image(encoder: nn.Module) -> int:
    """Sequence length of a timm ViT: patches plus prefix (class/register) tokens."""
    return encoder.patch_embed.num_patches + encoder.num_prefix_tokens


def device_name(device: torch.device) -> str:
    """A short description of the device for the report."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


# ---------------------------------------------------------------------------------- 1. per-method numbers


def measure_method(method: str, settings: Settings) -> dict[str, Any]:
    """Build the encoder for ``method`` and time its training step, eval forward and merged forward.

    Runs in a fresh worker process (see :func:`run_methods`), so the memory numbers are this method's alone.

    Returns:
        A JSON-ready dict: parameters, times in ms (``None`` where not applicable), peak memory in MiB.
    """
    device = torch.device(settings.device)
    torch.manual_seed(0)
    model = create_encoder(settings).to(device)
    encoder_params = sum(p.numel() for p in model.parameters())
    if method in METHOD_OPTIONS:
        inject_adapters(model, method, TARGETS, **METHOD_OPTIONS[method])
        perturb_(adapter_parameters(model), seed=1)
    else:
        model.requires_grad_(method == "full")
    trainable = [p for p in model.parameters() if p.requires_grad]
    images = torch.randn(settings.batch_size, 3, settings.img_size, settings.img_size, device=device)

    def train_step() -> None:
        if not trainable:  # frozen encoder: a decoder's training step only runs it forward, without a graph
            with torch.no_grad():
                model(images)
            return
        features = model(images)  # [B, embed_dim] pooled features
        features.float().square().mean().backward()
        zero_grad(trainable)

    def eval_forward() -> torch.Tensor:
        with torch.no_grad():
            return model(images)

    # Peak memory of the training steps: CUDA's allocator peak, or on CPU the growth of the process RSS
    # high-water mark over the RSS before training (unknown when building the model had peaked higher).
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before, high_water_before = rss_mib(), max_rss_mib()
    train_ms = median_ms(train_step, device, settings.iters, settings.warmup)
    if device.type == "cuda":
        peak_mib: float | None = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        high_water = max_rss_mib()
        peak_mib = high_water - rss_before if rss_before is not None and high_water > high_water_before else None

    model.eval()
    eval_ms = median_ms(eval_forward, device, settings.iters, settings.warmup)
    merged_ms = merge_diff = None
    if method in METHOD_OPTIONS:
        reference = eval_forward()
        merge_adapters(model)
        merge_diff = assert_close(eval_forward(), reference, f"{method}: merged vs unmerged output", rel=1e-3)
        merged_ms = median_ms(eval_forward, device, settings.iters, settings.warmup)

    return {
        "method": method,
        "options": METHOD_OPTIONS.get(method, {}),
        "encoder_params": encoder_params,
        "trainable_params": sum(p.numel() for p in trainable),
        "train_step_ms": train_ms,
        "eval_forward_ms": eval_ms,
        "merged_forward_ms": merged_ms,
        "merge_max_abs_diff": merge_diff,
        "peak_memory_mib": peak_mib,
        "memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_growth",
    }


def run_methods(methods: Sequence[str], settings: Settings) -> list[dict[str, Any]]:
    """:func:`measure_method` for each method, each in its own freshly spawned process, one after another."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        return [pool.submit(measure_method, method, settings).result() for method in methods]


# ------------------------------------------------------------------------------ shared strategy timing


def time_strategy(
    forward: Callable[[], list[torch.Tensor]],
    grad_tensors: Sequence[torch.Tensor],
    device: torch.device,
    settings: Settings,
) -> tuple[float, float]:
    """``(train_ms, forward_ms)``: forward + backward into every tensor needing a gradient, and forward alone.

    Args:
        forward: computes the outputs from tensors captured by the closure.
        grad_tensors: the leaves that receive gradients (adapter parameters and the input activations).
    """
    with torch.no_grad():
        output_grads = [torch.randn_like(y) for y in forward()]

    def train() -> None:
        torch.autograd.backward(forward(), output_grads)
        zero_grad(grad_tensors)

    def forward_only() -> None:
        with torch.no_grad():
            forward()

    return (
        median_ms(train, device, settings.iters, settings.warmup),
        median_ms(forward_only, device, settings.iters, settings.warmup),
    )


def winner(first: str, first_cost: float, second: str, second_cost: float) -> str:
    """The name with the smaller cost."""
    return first if first_cost <= second_cost else second


# ----------------------------------------------------------------------------------------- 2. TRM


def trm_per_token(layer: TRMLayer, x: torch.Tensor) -> torch.Tensor:
    """``W0 (T x) + b + Delta x`` with ``T`` applied to every token instead of being folded into ``W0``.

    Args:
        layer: a TRM layer around an ``nn.Linear``.
        x: ``[..., in]``.

    Returns:
        ``[..., out]``, equal to ``layer(x)``.
    """
    base = layer.base_layer
    transformed = F.linear(x, layer.transform_matrix())  # [..., in] @ T^T -> [..., in]
    return F.linear(transformed, base.weight, base.bias) + F.linear(x, layer.residual_matrix())  # [..., out]


def trm_train_macs(tokens: int, out: int, inp: int) -> tuple[int, int]:
    """Multiply-accumulates of one forward + backward: ``(materialised, per-token)``, building ``T``/``Delta`` aside.

    Materialised: ``W0 T`` (out in^2), the layer (N out in), grad_x and grad_W (2 N out in), grad_T (out in^2).
    Per-token: ``T x`` (N in^2), base and residual layers (2 N out in), their grad_x (2 N out in) and
    grad_Delta (N out in), grad_x and grad_T through ``T x`` (2 N in^2).
    """
    materialised = 3 * tokens * out * inp + 2 * out * inp * inp
    per_token = 5 * tokens * out * inp + 3 * tokens * inp * inp
    return materialised, per_token


def benchmark_trm(settings: Settings) -> list[dict[str, Any]]:
    """Materialised vs per-token TRM on the qkv/proj/fc1/fc2 shapes of ViT widths 192, 384 and 768."""
    device = torch.device(settings.device)
    tokens = VIT_TOKENS * settings.batch_size
    rows = []
    for width in TRM_WIDTHS:
        # (out, in) of the ViT block's linears
        shapes = {
            "qkv": (3 * width, width),
            "proj": (width, width),
            "fc1": (4 * width, width),
            "fc2": (width, 4 * width),
        }
        for name, (out, inp) in shapes.items():
            torch.manual_seed(0)
            layer = TRMLayer(nn.Linear(inp, out), TRMConfig(rank=2, order=3)).to(device)
            trainable = [p for p in layer.parameters() if p.requires_grad]  # the cores; base_layer is frozen
            perturb_(trainable, seed=2)
            x = torch.randn(settings.batch_size, VIT_TOKENS, inp, device=device, requires_grad=True)  # [B, 197, in]
            with torch.no_grad():
                diff = assert_close(trm_per_token(layer, x), layer(x), f"TRM {name} {out}x{inp}")
            materialised = time_strategy(lambda: [layer(x)], [*trainable, x], device, settings)
            per_token = time_strategy(lambda: [trm_per_token(layer, x)], [*trainable, x], device, settings)
            macs = trm_train_macs(tokens, out, inp)
            rows.append({
                "width": width, "layer": name, "out": out, "in": inp, "tokens": tokens, "max_abs_diff": diff,
                "materialised_train_ms": materialised[0], "per_token_train_ms": per_token[0],
                "materialised_forward_ms": materialised[1], "per_token_forward_ms": per_token[1],
                "faster_train": winner("materialised", materialised[0], "per-token", per_token[0]),
                "faster_forward": winner("materialised", materialised[1], "per-token", per_token[1]),
                "predicted_train": winner("materialised", macs[0], "per-token", macs[1]),
                "train_macs_materialised": macs[0], "train_macs_per_token": macs[1],
            })
    return rows


# ------------------------------------------------------------------------------------------ 3. tCURLoRA


def tcur_low_rank_factors(group: TCURGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """Real factors with ``Delta_m = left[m] @ right`` for every member ``m``, built without any ``n1 x n2`` array.

    ``Delta_m x = (1/n3) sum_f w_f Re(exp(2 pi i f m / n3) C_f dU_f R_f x)`` (METHODS.md section 3). With
    ``Q_mf = (w_f / n3) exp(2 pi i f m / n3) C_f dU_f`` and ``x`` real, ``Re(Q R x) = Re(Q) Re(R) x - Im(Q) Im(R) x``,
    so stacking the frequencies along the inner dimension gives real factors of inner size ``2 F r``.

    Returns:
        ``left``: ``[n3, n1, 2 F r]`` (differentiable in ``dU``); ``right``: ``[2 F r, n2]`` (constant).
    """
    n3, n1, n2 = group.n3, group.n1, group.n2
    freqs, rank = group.cur_C.shape[0], group.rank
    device = group.cur_C.device
    dU = group.complex_dU()  # [F, r, r]
    CdU = group.cur_C @ dU  # [F, n1, r] @ [F, r, r] -> [F, n1, r]
    f = torch.arange(freqs, device=device)
    m = torch.arange(n3, device=device)
    angle = (2 * math.pi / n3) * ((m[:, None] * f[None, :]) % n3)  # [n3, F], reduced mod n3 for accuracy
    coef = torch.polar(torch.ones_like(angle), angle) * (frequency_weights(n3).to(device) / n3)  # [n3, F] complex
    Q = (coef[:, :, None, None] * CdU).permute(0, 2, 1, 3).reshape(n3, n1, freqs * rank)  # [n3, n1, F r]
    left = torch.cat([Q.real, -Q.imag], dim=-1)  # [n3, n1, 2 F r]
    R = group.cur_R.reshape(freqs * rank, n2)  # [F, r, n2] -> [F r, n2], same (f, r) order as Q
    right = torch.cat([R.real, R.imag], dim=0)  # [2 F r, n2]
    return left, right


def tcur_train_macs(tokens: int, n3: int, n1: int, n2: int, inner: int) -> tuple[int, int]:
    """Multiply-accumulates of one forward + backward over a group: ``(materialised, low-rank)``.

    Materialised: per member the layer, grad_x and grad_W (3 N n1 n2); the delta itself is left out (it does
    not scale with N). Low-rank (inner size ``k = 2 F r``): the base layer and its grad_x (2 N n1 n2), then
    ``u = right x`` (N k n2), ``left u`` (N k n1), grad_u and grad_left (2 N k n1), grad_x through ``right`` (N k n2).
    """
    materialised = n3 * 3 * tokens * n1 * n2
    low_rank = n3 * (2 * tokens * n1 * n2 + tokens * inner * (2 * n2 + 3 * n1))
    return materialised, low_rank


def benchmark_tcurlora(settings: Settings) -> list[dict[str, Any]]:
    """Materialised vs low-rank-activation tCURLoRA on every group of ``--model`` (same targets as part 1)."""
    device = torch.device(settings.device)
    torch.manual_seed(0)
    model = create_encoder(settings).to(device)
    inject_adapters(model, "tcurlora", TARGETS, **METHOD_OPTIONS["tcurlora"])
    perturb_(adapter_parameters(model), seed=3)
    tokens = tokens_per_image(model)
    rows = []
    for group_name, group in tcurlora_groups(model).items():
        n3, n1, n2 = group.n3, group.n1, group.n2
        weights = torch.stack([  # the members' frozen W0, [n3, n1, n2]; biases are left out of both forms
            model.get_submodule(name).base_layer.weight.detach().reshape(-1, n1, n2)[index]
            for name, index in group.members
        ])
        x = torch.randn(settings.batch_size, tokens, n2, device=device, requires_grad=True)  # [B, T, n2], shared

        def materialised() -> list[torch.Tensor]:
            delta = group.compute_delta()  # [n3, n1, n2], once per group
            # A list index per member, as TCURLoRALayer does: its backward writes a full [n3, n1, n2] gradient.
            return [F.linear(x, weights[m] + delta[[m]].reshape(n1, n2)) for m in range(n3)]  # n3 x [B, T, n1]

        def materialised_unbind() -> list[torch.Tensor]:
            delta = group.compute_delta().unbind(0)  # n3 x [n1, n2]; one backward node stacks all the gradients
            return [F.linear(x, weights[m] + delta[m]) for m in range(n3)]

        def low_rank() -> list[torch.Tensor]:
            left, right = tcur_low_rank_factors(group)  # [n3, n1, k], [k, n2]
            return [F.linear(x, weights[m]) + F.linear(F.linear(x, right), left[m]) for m in range(n3)]

        with torch.no_grad():
            delta = group.compute_delta()
            left, right = tcur_low_rank_factors(group)
            dense = torch.stack([F.linear(x, delta[m]) for m in range(n3)])  # [n3, B, T, n1]
            factored = torch.stack([F.linear(F.linear(x, right), left[m]) for m in range(n3)])
            diff = assert_close(factored, dense, f"tCURLoRA {group_name}: low-rank vs materialised delta x")
        strategies = {"materialised": materialised, "materialised+unbind": materialised_unbind, "low-rank": low_rank}
        leaves = [*group.parameters(), x]
        times = {name: time_strategy(fn, leaves, device, settings) for name, fn in strategies.items()}
        inner = right.shape[0]
        macs = tcur_train_macs(settings.batch_size * tokens, n3, n1, n2, inner)
        rows.append({
            "group": group_name, "n3": n3, "n1": n1, "n2": n2, "inner_rank": inner,
            "tokens": settings.batch_size * tokens, "max_abs_diff": diff,
            "train_ms": {name: train for name, (train, _) in times.items()},
            "forward_ms": {name: forward for name, (_, forward) in times.items()},
            "fastest_train": min(times, key=lambda name: times[name][0]),
            "fastest_forward": min(times, key=lambda name: times[name][1]),
            "predicted_train": winner("materialised", macs[0], "low-rank", macs[1]),
            "train_macs_materialised": macs[0], "train_macs_low_rank": macs[1],
        })
    return rows


# ---------------------------------------------------------------------------------------------- report


def fmt(value: float | int | None, digits: int = 1) -> str:
    """Table cell: ``n/a`` for ``None``, thousands separators for ints, fixed decimals for floats."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    """The three Markdown tables with a one-line header each."""
    config = results["config"]
    parts = [
        f"**{config['model']}** at {config['img_size']} px, batch {config['batch_size']}, "
        f"on {results['device_name']}; median of {config['iters']} iterations after {config['warmup']} warm-up; "
        f"torch {results['torch']}, timm {results['timm']}.",
        "",
        "Methods (encoder only, targets attn + mlp; times in ms; memory in MiB, "
        + ("CUDA max allocated" if config["device"].startswith("cuda") else "CPU peak RSS growth") + "):",
        "",
        markdown_table(
            ["method", "trainable params", "% of encoder", "train step", "eval fwd", "merged fwd",
             "merge max abs diff", "peak mem"],
            [
                [r["method"], fmt(r["trainable_params"]), f"{100 * r['trainable_params'] / r['encoder_params']:.3f}",
                 fmt(r["train_step_ms"]), fmt(r["eval_forward_ms"]), fmt(r["merged_forward_ms"]),
                 "n/a" if r["merge_max_abs_diff"] is None else f"{r['merge_max_abs_diff']:.1e}",
                 fmt(r["peak_memory_mib"], 0)]
                for r in results["methods"]
            ],
        ),
    ]
    if results["trm_strategies"]:
        parts += [
            "",
            "TRM: materialised (`W0 T + Delta`, one linear) vs per-token (`W0 (T x) + Delta x`); times in ms:",
            "",
            markdown_table(
                ["width", "layer", "out x in", "tokens", "mat. train", "per-tok train", "faster train",
                 "FLOP model", "mat. fwd", "per-tok fwd", "faster fwd"],
                [
                    [str(r["width"]), r["layer"], f"{r['out']}x{r['in']}", str(r["tokens"]),
                     fmt(r["materialised_train_ms"]), fmt(r["per_token_train_ms"]), r["faster_train"],
                     r["predicted_train"], fmt(r["materialised_forward_ms"]), fmt(r["per_token_forward_ms"]),
                     r["faster_forward"]]
                    for r in results["trm_strategies"]
                ],
            ),
        ]
    if results["tcurlora_strategies"]:
        names = ("materialised", "materialised+unbind", "low-rank")
        parts += [
            "",
            "tCURLoRA: materialised (`irfft(C dU R)` per group, `W0 + delta` per member; indexed per member as the "
            "package does, or split with one `unbind`) vs the low-rank activation form; times in ms per group:",
            "",
            markdown_table(
                ["group", "n3 x n1 x n2", "inner rank", "tokens", "max abs diff", "mat. train", "mat.+unbind train",
                 "low-rank train", "fastest train", "FLOP model", "mat. fwd", "mat.+unbind fwd", "low-rank fwd",
                 "fastest fwd"],
                [
                    [r["group"], f"{r['n3']}x{r['n1']}x{r['n2']}", str(r["inner_rank"]), str(r["tokens"]),
                     f"{r['max_abs_diff']:.1e}", *(fmt(r["train_ms"][name]) for name in names), r["fastest_train"],
                     r["predicted_train"], *(fmt(r["forward_ms"][name]) for name in names), r["fastest_forward"]]
                    for r in results["tcurlora_strategies"]
                ],
            ),
        ]
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm ViT name (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=224, help="input side in pixels (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up iterations (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to measure")
    parser.add_argument("--json", type=Path, help="also write all results to this JSON file (atomically)")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the three benchmarks, print the Markdown report and optionally write JSON."""
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    settings = Settings(args.model, args.img_size, args.batch_size, str(device), args.iters, args.warmup)
    results: dict[str, Any] = {
        "config": asdict(settings) | {"methods": args.methods, "targets": TARGETS},
        "device_name": device_name(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "methods": run_methods(args.methods, settings),
        "trm_strategies": benchmark_trm(settings),
        "tcurlora_strategies": benchmark_tcurlora(settings),
    }
    print(report(results))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
