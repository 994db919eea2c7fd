"""Timing and memory of training steps and merged inference, methods interleaved so that drift hits all alike.

A training step is what ``scripts/train.py`` runs per batch: forward (bf16 autocast on a GPU, float32 on a CPU),
DiceCE loss plus the adapters' regulariser, backward, AdamW step, gradients dropped. Each timed call is bracketed
by ``torch.cuda.synchronize`` on a GPU. Round ``k`` runs one step of every method in turn; the first ``warmup``
rounds are not timed. Peak memory is measured per method in a fresh process: on a GPU
``torch.cuda.max_memory_allocated`` over the steps (weights, gradients, optimizer state and activations); on a CPU
(Linux) the peak resident size during the steps (``VmHWM``, reset through ``/proc/self/clear_refs`` just before them)
minus the resident size before them: gradients, optimizer state and activations, not the weights. Timings are keyed
by :attr:`~medpeft.benchmark.setups.MethodSetup.key` (the method, marked when its encoder is checkpointed).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import torch

from medpeft.adapters import regularization_loss
from medpeft.benchmark.setups import MethodSetup, build_setup

__all__ = ["Timing", "interleaved_step_times", "merged_latency", "peak_training_memory_mb", "training_step"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _batch(batch_size: int, img_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch_size, 3, img_size, img_size, generator=generator)
    label = (torch.rand(batch_size, 1, img_size, img_size, generator=generator) > 0.7).long()
    return image.to(device), label.to(device)


def training_step(setup: MethodSetup, image: torch.Tensor, label: torch.Tensor) -> Callable[[], None]:
    """Return a function running one optimizer step of ``setup`` on the batch."""
    module, device = setup.module, image.device

    def step() -> None:
        with _autocast(device):
            loss = module.loss(setup.net(image), label)
            loss = loss + module.hparams.reg_weight * regularization_loss(setup.net.encoder)
        loss.backward()
        setup.optimizer.step()
        setup.optimizer.zero_grad(set_to_none=True)

    module.train()
    return step


class Timing(dict):
    """``{method: [seconds per timed round]}``."""


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def interleaved_step_times(
    setups: list[MethodSetup], batch_size: int, img_size: int, iters: int, warmup: int
) -> Timing:
    """Seconds of each training step, ``iters`` timed rounds over all methods after ``warmup`` untimed ones."""
    device = next(setups[0].net.parameters()).device
    image, label = _batch(batch_size, img_size, device)
    steps = {setup.key: training_step(setup, image, label) for setup in setups}
    timing = Timing({method: [] for method in steps})
    for round_ in range(warmup + iters):
        for method, step in steps.items():
            seconds = _time(step, device)
            if round_ >= warmup:
                timing[method].append(seconds)
    return timing


def merged_latency(setups: list[MethodSetup], batch_size: int, img_size: int, iters: int, warmup: int) -> Timing:
    """Seconds of an eval forward after merging each method's adapters (``decoder_only``: the plain network)."""
    device = next(setups[0].net.parameters()).device
    image, _ = _batch(batch_size, img_size, device)
    for setup in setups:
        setup.merge()
        setup.net.eval()
    timing = Timing({setup.key: [] for setup in setups})
    with torch.no_grad(), _autocast(device):
        for round_ in range(warmup + iters):
            for setup in setups:
                seconds = _time(partial(setup.net, image), device)
                if round_ >= warmup:
                    timing[setup.key].append(seconds)
    return timing


def _status_mib(field: str) -> float:
    """A memory line of ``/proc/self/status`` in MiB (Linux)."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/self/status: CPU peak memory needs Linux")
    return int(match.group(1)) / 1024


def _peak_in_this_process(
    encoder: str, method: str, img_size: int, batch_size: int, device: str, steps: int, grad_checkpointing: bool
) -> float:
    target = torch.device(device)
    setup = build_setup(encoder, method, img_size, target, grad_checkpointing=grad_checkpointing)
    image, label = _batch(batch_size, img_size, target)
    step = training_step(setup, image, label)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(target)
        return torch.cuda.max_memory_allocated(target) / 2**20
    before = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident size (VmHWM) to the current one
    for _ in range(steps):
        step()
    return _status_mib("VmHWM") - before


def peak_training_memory_mb(
    encoder: str,
    method: str,
    img_size: int,
    batch_size: int,
    device: torch.device,
    steps: int = 2,
    grad_checkpointing: bool = False,
) -> float:
    """Peak training memory of ``method`` in MiB, measured in a freshly spawned process (see the module docstring);
    ``grad_checkpointing``: with the encoder's blocks recomputed in the backward pass."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        job = pool.submit(
            _peak_in_this_process, encoder, method, img_size, batch_size, str(device), steps, grad_checkpointing
        )
        return float(job.result())
