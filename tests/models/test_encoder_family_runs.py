"""Every listed encoder family through ``scripts/train.py``: a 2-step run writes a complete run whose task file
rebuilds the network exactly, with the decoder ``auto`` picks and the family's presets (random init: no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medpeft.data import generate_demo_isic
from medpeft.evaluation.checkpoint import load_trained_network
from medpeft.experiment.config import load_config
from medpeft.experiment.task_file import load_task

REPO = Path(__file__).resolve().parents[2]
# a tiny run (tests/conftest.py) with the decoder the family picks and no post-processing search
FAMILY_OVERRIDES = ["model.decoder=auto", "postprocess.min_component_size=0"]

# (timm encoder, family, method, targets, decoder auto picks); one adapter method per family, all three covered
FAMILY_RUNS = [
    ("convnext_atto", "convnext", "lora", "[mlp]", "UNetDecoder"),
    ("tf_efficientnet_lite0", "efficientnet", "tcurlora", "[conv]", "UNetDecoder"),
    ("deit_tiny_patch16_224", "vit", "trm", "[attn, mlp]", "UNETRDecoder"),
    ("vit_small_patch14_reg4_dinov2", "vit", "lora", "[attn]", "UNETRDecoder"),
    ("eva02_tiny_patch14_224", "eva", "tcurlora", "[attn, mlp]", "UNETRDecoder"),
    ("beit_base_patch16_224", "eva", "trm", "[qkv]", "UNETRDecoder"),
    ("samvit_base_patch16", "sam", "lora", "[attn]", "UNETRDecoder"),
]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_isic(tmp_path_factory.mktemp("data") / "demo")


@pytest.mark.parametrize(("encoder", "family", "method", "targets", "decoder"), FAMILY_RUNS)
def test_two_step_run_per_family(
    train_script,
    tiny_run: list[str],
    demo_root: Path,
    tmp_path: Path,
    encoder: str,
    family: str,
    method: str,
    targets: str,
    decoder: str,
) -> None:
    overrides = [
        *tiny_run,
        *FAMILY_OVERRIDES,
        f"data.root={demo_root}",
        f"output_dir={tmp_path}",
        f"model.encoder={encoder}",
        f"adapter.method={method}",
        f"adapter.targets={targets}",
        "adapter.rank=2",
    ]
    run_dir = train_script.main(["--config", str(REPO / "configs" / "demo_lora.yaml"), "--set", *overrides])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["encoder"] == encoder and metrics["method"] == method and 0.0 <= metrics["dice"] <= 1.0
    assert metrics["adapter_params"] > 0 and (run_dir / "adapter.safetensors").is_file()
    assert metrics["trainable_params"] == metrics["decoder_params"] + metrics["adapter_params"]
    cfg = load_config(run_dir / "config.yaml")
    run_net = load_trained_network(cfg, run_dir / metrics["best_checkpoint"])
    assert run_net.encoder.family.name == family and type(run_net.decoder).__name__ == decoder

    task_net, _ = load_task(run_dir / "task.safetensors")  # whole encoder inside: model.pretrained is false
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = run_net(x)
        torch.testing.assert_close(task_net(x), expected, rtol=0, atol=0)
    assert expected.shape == (2, 2, 32, 32)
