"""The README's table of adapter methods, generated from the registry so the two cannot disagree.

``python -m medpeft.adapters.table`` prints it; a test checks that README.md holds it verbatim.
"""

from __future__ import annotations

from medpeft.adapters import methods as _methods  # noqa: F401  (registers every shipped method)
from medpeft.adapters.base import ADAPTERS

__all__ = ["markdown_table"]


def markdown_table() -> str:
    """One row per registered method: name, who implements it, size knob, whether it merges, the targets a sweep
    gives it (weight layers: the config's), and its one-line summary."""
    lines = [
        "| method | from | size knob | merges | sweep targets | what it trains |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in ADAPTERS.values():
        merges = "yes" if method.merge_refusal is None else "no"
        targets = ", ".join(method.default_targets) if method.default_targets else "the config's"
        lines.append(
            f"| `{method.name}` | {method.source} | {method.size_knob or '-'} | {merges} | {targets} | {method.summary} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
