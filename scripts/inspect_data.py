#!/usr/bin/env python
"""Check that a dataset is read right before a long training: split sizes, shapes, spacings, labels, a montage.

Usage:
    python scripts/inspect_data.py --dataset isic2018 --root /data/isic2018
    python scripts/inspect_data.py --dataset busi --root /data/busi --option include_normal=false --json

See ``python scripts/inspect_data.py --help`` and :mod:`medpeft.data.inspection` for the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Let the script run from a plain checkout (without `pip install -e .`): put the repository root on the path.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from medpeft.data.inspection import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
