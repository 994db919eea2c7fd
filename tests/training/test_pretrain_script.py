"""scripts/pretrain.py: a tiny source-task run exports an encoder that model.pretrained loads back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from medpeft.data import generate_source_task
from medpeft.models import build_segmenter

REPO = Path(__file__).resolve().parents[2]


def test_pretrain_exports_a_loadable_float16_encoder(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("pretrain_script", REPO / "scripts" / "pretrain.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # A tiny source set read as plain ISIC layout (the `demo_source` name would generate the full 400 images).
    source = generate_source_task(tmp_path / "source", n_images=12, size=32)
    out = tmp_path / "encoder.safetensors"
    script.main([
        "--out", str(out), "--set", "data.dataset=isic2018", f"data.root={source}", "data.image_size=32", "data.batch_size=4",
        f"output_dir={tmp_path / 'runs'}", "trainer.max_steps=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
    ])  # fmt: skip

    tensors = load_file(str(out))
    assert tensors and all(t.dtype == torch.float16 for t in tensors.values())
    assert "blocks.0.attn.qkv.weight" in tensors and not any(k.startswith(("model.", "head")) for k in tensors)
    with safe_open(str(out), framework="pt") as handle:
        facts = json.loads(handle.metadata()["medpeft"])
    assert facts["encoder"] == "vit_tiny_patch16_224" and facts["source_task"] == "isic2018"

    net = build_segmenter("vit_tiny_patch16_224", pretrained=str(out), img_size=32)
    loaded = net.encoder.model.blocks[0].attn.qkv.weight
    assert torch.equal(loaded, tensors["blocks.0.attn.qkv.weight"].float())
