"""Every adapter trains under Lightning DDP (2 CPU processes, gloo): no unused-parameter error, after the steps every
rank holds the same adapter and decoder weights, and with a checkpointed encoder the same weights as without."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).resolve().parent / "workers" / "ddp_adapters.py"
REPO = Path(__file__).resolve().parents[2]
METHODS = ("lora", "trm", "tcurlora")


def run_worker(out: Path, *flags: str) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Run the worker into ``out``; each method's trainable tensors per rank."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(out), *flags], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {method: [load_file(out / f"{method}-rank{rank}.safetensors") for rank in (0, 1)] for method in METHODS}


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, torch.Tensor]]]:
    return run_worker(tmp_path_factory.mktemp("ddp"))


def test_adapters_agree_across_ranks_after_ddp_steps(plain_run: dict[str, list[dict[str, torch.Tensor]]]) -> None:
    for method, (rank0, rank1) in plain_run.items():
        assert rank0.keys() == rank1.keys() and any(".encoder." in key for key in rank0), method
        for key in rank0:
            torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=1e-6, msg=f"{method}: {key}")
        moved = [key for key in rank0 if "encoder" in key and rank0[key].abs().sum() > 0]
        assert moved, f"{method}: the adapters never moved"


def test_checkpointed_encoder_trains_the_same_under_ddp(
    plain_run: dict[str, list[dict[str, torch.Tensor]]], tmp_path: Path
) -> None:
    """Recomputing the blocks in the backward pass (tCURLoRA's factors included) changes no gradient that DDP averages:
    every rank ends where the run without checkpointing did."""
    checkpointed = run_worker(tmp_path, "--grad-checkpointing")
    for method, ranks in checkpointed.items():
        for rank, tensors in enumerate(ranks):
            expected = plain_run[method][rank]
            assert tensors.keys() == expected.keys(), method
            for key in expected:
                torch.testing.assert_close(tensors[key], expected[key], rtol=1e-5, atol=1e-6, msg=f"{method}: {key}")
