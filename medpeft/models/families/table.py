"""The README's table of encoder families, generated from the families themselves so the two cannot disagree.

``python -m medpeft.models.families.table`` prints it; a test checks that README.md holds it verbatim.
"""

from __future__ import annotations

from medpeft.models.families.base import FAMILIES
from medpeft.models.families.generic import GENERIC

__all__ = ["markdown_table"]


def markdown_table() -> str:
    """One row per registered family, then the generic fallback; columns are :meth:`EncoderFamily.describe`'s keys."""
    rows = [family.describe() for family in [*FAMILIES.values(), GENERIC]]
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row[column] for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
