#!/usr/bin/env python
"""Train every method x seed combination of a base config, then compare them as scripts/compare.py does.

Usage:
    python scripts/sweep.py --config configs/demo_tcur.yaml --methods tcurlora,trm,lora,full,decoder_only --seeds 0,1,2
    python scripts/sweep.py --config configs/demo_tcur.yaml --methods lora,scratch --method-set lora:adapter.rank=2 \\
        --dry-run

See ``python scripts/sweep.py --help`` and :mod:`medpeft.training.sweep` for the per-method settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Let the script run from a plain checkout (without `pip install -e .`): put the repository root on the path.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from medpeft.training.sweep import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
