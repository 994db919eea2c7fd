#!/usr/bin/env python
"""Segment new 2D images with a trained run or a task file; masks at each image's own size.

Usage:
    python scripts/predict.py --task RUN_DIR/task.safetensors --input FILE_OR_DIR --out DIR [--device auto]
    python scripts/predict.py --run RUN_DIR --input FILE_OR_DIR --out DIR

See ``python scripts/predict.py --help`` and :mod:`medpeft.prediction`.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from medpeft.prediction import main

if __name__ == "__main__":
    sys.exit(main())
