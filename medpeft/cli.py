"""The command-line convention shared by the scripts: a user error is one ``error: ...`` line on stderr, status 2."""

from __future__ import annotations

import sys
from typing import NoReturn

__all__ = ["exit_with_error"]


def exit_with_error(message: str) -> NoReturn:
    """Report a user error without a traceback and exit with status 2.

    The first line of ``message`` names what is at fault (file, folder or key); data errors may add hint lines
    after it (expected layout, where to download).
    """
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
