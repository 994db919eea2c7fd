#!/usr/bin/env python
"""Benchmark the fine-tuning methods: training-step time, peak memory and merged inference (see benchmarks/).

Usage:
    python scripts/benchmark.py [--encoders NAME ...] [--methods M ...] [--img-size 224] [--batch-size N]
                                [--iters 5] [--warmup 2] [--device auto] [--no-memory] [--grad-checkpointing]
                                [--out benchmarks/results]
    python scripts/benchmark.py --quick     # smoke test

See ``python scripts/benchmark.py --help`` and :mod:`medpeft.benchmark`.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from medpeft.benchmark import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
