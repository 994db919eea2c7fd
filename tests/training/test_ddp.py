"""Every adapter trains under Lightning DDP (2 CPU processes, gloo): no unused-parameter error, and after the steps
every rank holds the same adapter and decoder weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = Path(__file__).resolve().parent / "workers" / "ddp_adapters.py"
REPO = Path(__file__).resolve().parents[2]


def test_adapters_agree_across_ranks_after_ddp_steps(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for method in ("lora", "trm", "tcurlora"):
        rank0 = load_file(tmp_path / f"{method}-rank0.safetensors")
        rank1 = load_file(tmp_path / f"{method}-rank1.safetensors")
        assert rank0.keys() == rank1.keys() and any(".encoder." in key for key in rank0), method
        for key in rank0:
            torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=1e-6, msg=f"{method}: {key}")
        moved = [key for key in rank0 if "encoder" in key and rank0[key].abs().sum() > 0]
        assert moved, f"{method}: the adapters never moved"
