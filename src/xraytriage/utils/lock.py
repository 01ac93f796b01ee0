"""One run per output: an exclusive, non-blocking ``flock`` on a lock file beside what a run writes.

Two ``score`` runs on one ``--out`` would interleave rows; two ``train`` runs in one directory would
mix one's config with the other's checkpoint. The lock is held for the whole run and released by the
kernel when the process ends, however it ends (``kill -9`` included), so a stale lock never blocks a
rerun. The file stays in place (deleting a lock file reopens a race) and holds the holder's pid.

A ``flock`` belongs to the open file, which a forked child (a DataLoader worker) shares: if the run
is killed, its orphaned workers would hold the lock until they notice and exit, and the rerun would be
refused. So every forked child closes its copy of the held lock descriptors at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from xraytriage.utils.errors import TriageError

_HELD: set[int] = set()  # lock descriptors this process holds; closed in forked children


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class OutputLocked(TriageError, RuntimeError):
    """Another process is writing the same output; the message names it and the holder's pid."""


def lock_file_for(output: str | Path) -> Path:
    """The lock of a file output (``.NAME.lock`` beside it) or of a folder (``FOLDER/.lock``)."""
    p = Path(output)
    return p / ".lock" if p.is_dir() else p.with_name(f".{p.name}.lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


@contextlib.contextmanager
def exclusive_lock(lock_file: str | Path, what: str) -> Iterator[None]:
    """Hold ``lock_file`` for the block or raise :class:`OutputLocked` at once (never waits)."""
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLocked(
                f"{what} is in use by another xraytriage run ({_holder(fd)}, lock {path}); "
                "wait for it to finish or choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD.add(fd)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # closing the last descriptor of the open file releases the lock
