#!/usr/bin/env python
"""Pre-train the demo encoder on the synthetic source task and export it as a timm-compatible file.

The demo is a real transfer: this script trains ViT-Tiny + decoder fully on ``demo_source`` (textured blobs and
polygons) through the same pipeline as ``scripts/train.py``, then writes the encoder of the best checkpoint, in
plain timm key names and float16 (about 11 MB), to ``checkpoints/demo_source_vit_tiny.safetensors``. The
``demo_*.yaml`` configs load that file with ``model.pretrained`` and adapt it to the different ``demo`` task.

Usage:
    python scripts/pretrain.py [--config configs/demo_pretrain.yaml] [--out FILE] [--set KEY=VALUE ...]

Training runs on the CPU with deterministic algorithms, so on the pinned versions (constraints.txt) the output is
reproducible; ``checkpoints/README.md`` records the command, the wall time and the SHA-256 of the committed file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import torch
from safetensors.torch import save_file

from medpeft.evaluation.checkpoint import find_run_checkpoint, load_network_state
from medpeft.experiment.config import load_config
from medpeft.experiment.network import segmenter_from_config
from medpeft.io import atomic_output
from medpeft.models.pretrained import DECODER_PREFIX, encoder_state_dict_for_timm
from medpeft.training.run import main as train_main

__all__ = ["export_encoder", "main"]


def export_encoder(run_dir: Path, out: Path, with_decoder: bool = False) -> str:
    """Write the encoder of ``run_dir``'s best checkpoint to ``out`` (float16 safetensors); return its SHA-256.

    With ``with_decoder`` the decoder's tensors are added as ``decoder.<name>``, so ``model.pretrained: <out>``
    initialises the whole network of a target task (its head too when the class count matches).
    """
    cfg = load_config(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    net = segmenter_from_config(cfg, pretrained=False)  # the checkpoint below holds every weight
    load_network_state(net, find_run_checkpoint(run_dir))
    state = dict(encoder_state_dict_for_timm(net.encoder))
    if with_decoder:
        state.update({f"{DECODER_PREFIX}{key}": value for key, value in net.decoder.state_dict().items()})
    tensors = {key: value.detach().to(torch.float16).contiguous() for key, value in state.items()}
    # One header key holding sorted JSON: safetensors stores header metadata in a hash map, so several keys would
    # come out in a different order from run to run and break the byte-for-byte reproducibility of the file.
    facts = {
        "encoder": cfg.model.encoder,
        "img_size": cfg.data.image_size,
        "source_task": cfg.data.dataset,
        "source_test_dice": round(metrics["dice"], 4),
        "made_by": "python scripts/pretrain.py",
    }
    if with_decoder:
        facts["with_decoder"] = True
    header = {"medpeft": json.dumps(facts, sort_keys=True)}
    with atomic_output(out) as temporary:
        save_file(tensors, str(temporary), metadata=header)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="pretrain.py", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", default="configs/demo_pretrain.yaml", metavar="FILE")
    parser.add_argument("--out", default="checkpoints/demo_source_vit_tiny.safetensors", type=Path, metavar="FILE")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--with-decoder", action="store_true", help="also export the decoder (as decoder.*): a whole source network"
    )
    args = parser.parse_args(argv)
    train_args = ["--config", args.config] + (["--set", *args.overrides] if args.overrides else [])
    run_dir = train_main(train_args)
    digest = export_encoder(run_dir, args.out, with_decoder=args.with_decoder)
    size_mb = args.out.stat().st_size / 2**20
    print(f"encoder written to {args.out} ({size_mb:.1f} MiB, sha256 {digest})")
    return args.out


if __name__ == "__main__":
    main()
