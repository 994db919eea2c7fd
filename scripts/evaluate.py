#!/usr/bin/env python
"""Evaluate a trained run or checkpoint on a held-out split.

Usage:
    python scripts/evaluate.py --run runs/demo_tcur/20261123-101500
    python scripts/evaluate.py --run RUN_DIR --protocol transunet --data-root /data/ACDC
    python scripts/evaluate.py --checkpoint RUN_DIR/checkpoints/last.ckpt --split val

See ``python scripts/evaluate.py --help`` and :mod:`medpeft.evaluation.command` for the outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Let the script run from a plain checkout (without `pip install -e .`): put the repository root on the path.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from medpeft.evaluation.command import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
