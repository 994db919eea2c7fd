#!/usr/bin/env python
"""Fine-tune and evaluate a segmentation model from a YAML config.

Usage:
    python scripts/train.py --config configs/demo_tcur.yaml
    python scripts/train.py --config configs/demo_lora.yaml --set adapter.rank=8 trainer.max_epochs=2
    python scripts/train.py --resume runs/demo_lora/20261130-151739      # continue a killed run

See ``python scripts/train.py --help`` and :mod:`medpeft.training.run` for the outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Let the script run from a plain checkout (without `pip install -e .`): put the repository root on the path.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from medpeft.training.run import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
