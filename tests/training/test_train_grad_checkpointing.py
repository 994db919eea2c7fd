"""``scripts/train.py`` with ``model.grad_checkpointing: true``: the encoder is checkpointed and a tiny tCURLoRA run
writes everything a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medpeft.data import generate_demo_isic
from medpeft.experiment import network
from medpeft.experiment.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_checkpointed_tcurlora_run_is_complete(
    train_script, tiny_run: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enabled = []
    real = network.enable_grad_checkpointing

    def spy(encoder: torch.nn.Module) -> str:
        enabled.append(real(encoder))
        return enabled[-1]

    monkeypatch.setattr(network, "enable_grad_checkpointing", spy)
    monkeypatch.chdir(tmp_path)
    demo = generate_demo_isic(tmp_path / "demo")
    overrides = [*tiny_run, f"data.root={demo}", "output_dir=runs", "model.grad_checkpointing=true"]

    run_dir = train_script.main(["--config", str(REPO / "configs" / "demo_tcur.yaml"), "--set", *overrides])

    assert enabled and set(enabled) == {"timm"}  # the trained network (and the rebuilt ones) were checkpointed
    assert load_config(run_dir / "config.yaml").model.grad_checkpointing
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "tcurlora" and 0.0 <= metrics["dice"] <= 1.0 and metrics["adapter_params"] > 0
    assert (run_dir / metrics["best_checkpoint"]).is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    for name in ("adapter.safetensors", "task.safetensors", "split.json", "per_case.csv", "summary.json"):
        assert (run_dir / name).is_file(), name
