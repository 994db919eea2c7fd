#!/usr/bin/env python
"""Compare finished training runs: tables (markdown, CSV, LaTeX) and a Dice-vs-parameters Pareto plot.

Usage:
    python scripts/compare.py runs/sweep/demo_tcur
    python scripts/compare.py runs/demo_full runs/demo_tcur --out runs/comparison --reference full --title "Demo"

See ``python scripts/compare.py --help`` and :mod:`medpeft.reports.comparison` for the statistics.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Let the script run from a plain checkout (without `pip install -e .`): put the repository root on the path.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from medpeft.reports.compare import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
