#!/usr/bin/env python
"""Convert a pretrained weights file (official SAM / MedSAM, DINOv2, EfficientNet-Lite, or timm-named) to timm names.

The output is the timm-named safetensors of the encoder's plain timm model, already resampled to the image size and
adapted to the input channels, so ``model.pretrained: OUT.safetensors`` loads it with no conversion.

Usage:
    python scripts/convert_weights.py --encoder samvit_base_patch16 --image-size 256 --in-channels 3 \
        sam_vit_b_01ec64.pth sam_vit_b_256.safetensors

It prints how many tensors were mapped, and which were dropped (no part of the encoder, e.g. SAM's
``prompt_encoder.*``) or are missing (encoder tensors the file lacks, left at their random init).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from medpeft.models.encoder import TimmEncoder
from medpeft.models.pretrained import convert_weights_file

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    parser = argparse.ArgumentParser(prog="convert_weights.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", required=True, help="timm model name, e.g. samvit_base_patch16")
    parser.add_argument("--image-size", type=int, required=True, help="input side length the encoder is built for")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("src", type=Path, help="weights file (.pth/.pt/.bin/.safetensors)")
    parser.add_argument("dst", type=Path, help="output .safetensors")
    args = parser.parse_args(argv)

    encoder = TimmEncoder(args.encoder, in_channels=args.in_channels, img_size=args.image_size)
    report = convert_weights_file(encoder, args.src, args.dst)
    print(f"mapped {len(report['mapped'])} tensors onto timm {args.encoder!r} names -> {args.dst}")
    for kind in ("dropped", "missing_keys", "unexpected_keys"):
        names = report[kind]
        print(f"{kind.removesuffix('_keys')}: {len(names)}" + (f": {', '.join(names)}" if names else ""))
    return report


if __name__ == "__main__":
    main()
