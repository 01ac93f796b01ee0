"""A decoding process that dies (a native decoder's segfault, the per-file time limit): recognised,
classified, and kept from interrupting the run's bookkeeping.

PyTorch's DataLoader installs a SIGCHLD handler that raises ``RuntimeError("DataLoader worker (pid
N) is killed by signal: ...")`` in the main thread, wherever it is: inside a journal append, inside
the path generator, inside an ONNX export. The scoring run builds its engine before any worker
exists, and wraps each piece of bookkeeping that must happen whole (append + marking the paths
answered; drawing the next path) in :func:`sigchld_deferred`, so the error arrives between steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CRASHED = "decoder_crashed"
TIMED_OUT = "timeout"
REASONS = {
    CRASHED: "the decoding process died on this file (e.g. a segfault in a native codec)",
    TIMED_OUT: "decoding took longer than the per-file time limit (--file-timeout)",
}


def _note_path(notes_dir: str | Path, path: str) -> Path:
    return Path(notes_dir) / hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()


def leave_death_note(notes_dir: str | Path, path: str, reason: str, message: str) -> None:
    """A worker about to end itself on purpose says why, for the run's crash isolation to report."""
    with contextlib.suppress(OSError):
        _note_path(notes_dir, path).write_text(f"{reason}\t{message}", encoding="utf-8")


def read_death_note(notes_dir: str | Path | None, path: str) -> tuple[str, str] | None:
    """(reason, message) a worker left for ``path`` before ending itself, or None."""
    if notes_dir is None:
        return None
    try:
        reason, _, message = _note_path(notes_dir, path).read_text(encoding="utf-8").partition("\t")
    except OSError:
        return None
    return reason, message


def worker_died(exc: BaseException | None) -> bool:
    """True for the errors PyTorch raises when a DataLoader worker process ends abnormally."""
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return "DataLoader worker" in text and ("exited unexpectedly" in text or "killed" in text)


def death_reason(exc: BaseException, elapsed_s: float, time_limit_s: float | None) -> str:
    """``timeout`` when the worker was killed by its alarm (or lived the whole time limit), else
    ``decoder_crashed``."""
    text = str(exc)
    if "Alarm clock" in text or "SIGALRM" in text:
        return TIMED_OUT
    if time_limit_s and elapsed_s >= time_limit_s:
        return TIMED_OUT
    return CRASHED


@contextlib.contextmanager
def sigchld_deferred() -> Iterator[None]:
    """Hold SIGCHLD's Python handler until the block is done, then run it (it may raise there).

    Python runs signal handlers in the main thread between bytecodes, so swapping the handler is
    enough whichever thread the kernel delivered the signal to. Outside the main thread (where no
    handler can be set, and none runs) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGCHLD, lambda signum, frame: arrived.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)
    if arrived and callable(previous):
        previous(*arrived[0])
