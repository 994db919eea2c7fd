"""Speed and memory of the fine-tuning methods, against Hugging Face peft's LoRA (``scripts/benchmark.py``).

- :mod:`~medpeft.benchmark.setups`: one segmenter per method, trained as ``scripts/train.py`` trains it;
- :mod:`~medpeft.benchmark.measure`: interleaved step timing, peak memory in fresh processes, merged latency;
- :mod:`~medpeft.benchmark.report`: records, ``results.json`` and ``results.md``;
- :mod:`~medpeft.benchmark.command`: the command line.
"""

from medpeft.benchmark.command import main
from medpeft.benchmark.setups import METHODS, build_setup

__all__ = ["METHODS", "build_setup", "main"]
