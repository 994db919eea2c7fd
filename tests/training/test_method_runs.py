"""Every baseline method through ``scripts/train.py``: a 2-step run on vit_tiny (from the demo's source file, so the
task file carries the adapter) and on tf_efficientnet_lite0 where the method fits a CNN; the run is complete, its size
facts are in metrics.json, and the task file rebuilds the trained network exactly. Each run sets its size knob to 2,
except one run per encoder that goes through ``adapter.budget`` (tests/adapters/test_budget.py covers every method's
budget matching)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medpeft.adapters import ADAPTERS
from medpeft.data import generate_demo_isic
from medpeft.evaluation.checkpoint import load_trained_network
from medpeft.experiment.config import load_config
from medpeft.experiment.task_file import load_task

REPO = Path(__file__).resolve().parents[2]
COVERED_ELSEWHERE = {"lora", "trm", "tcurlora"}  # tests/models/test_encoder_family_runs.py and the training tests
ONLY_VIT = {"houlsby", "adaptformer", "vpt", "vera"}  # token-sequence modules, or (VeRA) nn.Linear only in peft
ONLY_CNN = {"conv_adapter"}
# (encoder, pretrained, targets of weight-layer methods, budget)
ENCODERS = {
    "vit": ("vit_tiny_patch16_224", str(REPO / "checkpoints" / "demo_source_vit_tiny.safetensors"), "[attn, mlp]", 400_000),
    "cnn": ("tf_efficientnet_lite0", "false", "[conv]", 250_000),
}  # fmt: skip
BUDGET_RUNS = {("houlsby", "vit"), ("dora", "cnn")}
CASES = [
    (method, family)
    for method in sorted(set(ADAPTERS) - COVERED_ELSEWHERE)
    for family in ENCODERS
    if not (family == "vit" and method in ONLY_CNN) and not (family == "cnn" and method in ONLY_VIT)
]


def _size(method: str, budget: int | None) -> list[str]:
    """Overrides setting the method's size: through the budget, or its knob at 2."""
    knob = ADAPTERS[method].size_knob
    if budget is not None:
        return ["adapter.rank=null", f"adapter.budget={budget}"]
    if knob == "rank" or knob is None:
        return ["adapter.rank=2"]
    return ["adapter.rank=null", f"adapter.options={{{knob}: 2}}"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_isic(tmp_path_factory.mktemp("data") / "demo")


@pytest.mark.parametrize(("method", "family"), CASES)
def test_two_step_run_at_a_budget(train_script, tiny_run, demo_root, tmp_path, method, family) -> None:
    encoder, pretrained, weight_targets, budget = ENCODERS[family]
    targets = "[" + ", ".join(ADAPTERS[method].default_targets) + "]" if ADAPTERS[method].default_targets else None
    overrides = [
        *tiny_run,
        "postprocess.min_component_size=0",
        f"data.root={demo_root}",
        f"output_dir={tmp_path}",
        f"model.encoder={encoder}",
        f"model.pretrained={pretrained}",
        "model.in_channels=3",
        f"adapter.method={method}",
        f"adapter.targets={targets or weight_targets}",
        *_size(method, budget if (method, family) in BUDGET_RUNS else None),
    ]
    run_dir = train_script.main(["--config", str(REPO / "configs" / "demo_lora.yaml"), "--set", *overrides])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (
        metrics["method"] == method and 0.0 <= metrics["dice"] <= 1.0 and (run_dir / "adapter.safetensors").is_file()
    )
    assert (
        metrics["trainable_params"]
        == metrics["decoder_params"] + metrics["adapter_params"]
        > metrics["decoder_params"]
    )
    assert metrics["size_knob"] == ADAPTERS[method].size_knob
    assert metrics["mergeable"] == (ADAPTERS[method].merge_refusal is None)
    if (method, family) in BUDGET_RUNS:
        assert metrics["budget"] == budget and metrics["budget_params"] == metrics["adapter_params"] <= budget
        assert metrics["size_knob_value"] == metrics["budget_knob_value"] > 2
    elif metrics["size_knob"] is not None:
        assert metrics["size_knob_value"] == 2 and "budget" not in metrics

    cfg = load_config(run_dir / "config.yaml")
    run_net = load_trained_network(cfg, run_dir / metrics["best_checkpoint"])
    task_net, _ = load_task(run_dir / "task.safetensors")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = run_net(x)
        torch.testing.assert_close(task_net(x), expected, rtol=0, atol=0)
