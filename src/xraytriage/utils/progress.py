"""Whether progress bars are drawn: only for a person watching a terminal.

tqdm redraws its bar with carriage returns; written into a log file or a CI log that becomes thousands
of fragments. Every bar in xraytriage asks :func:`show_progress`, which says no when the user passed
``--no-progress`` (any command: :func:`set_progress`), when the caller asked for no bar, or when
stderr (where tqdm writes) is not a terminal. Per-epoch and summary lines are logged either way.
"""

from __future__ import annotations

import sys

_enabled = True


def set_progress(enabled: bool) -> None:
    """Process-wide switch, set once by the command line from ``--no-progress``."""
    global _enabled
    _enabled = bool(enabled)


def show_progress(requested: bool = True) -> bool:
    """True when a bar should be drawn: requested, not switched off, and stderr is a terminal."""
    if not (requested and _enabled):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed or detached stream
        return False
