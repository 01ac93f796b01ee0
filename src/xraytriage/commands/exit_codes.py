"""Exit codes of every command, and the one place unexpected failures become one line and a code.

A hospital's scheduler decides what to do from the exit code alone: "some scans failed" (look at the
errors file) must not look like "the disk is full" (free space, rerun) or "the tool has a bug" (report
it). So I/O failures and internal errors have codes of their own, and their message is one line that
names the path; the traceback of an internal error goes to a file the message names.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import traceback
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1  # score: some files could not be scored; other commands: the input was refused
EXIT_USAGE = 2  # usage or configuration error, a refused input file, an output in use or from another model
EXIT_GATE_FAILED = 3  # evaluate: the fairness gate failed
EXIT_EXPORT_MISMATCH = 3  # export: the exported outputs differ from PyTorch
EXIT_CANNOT_CERTIFY = 4  # evaluate: the gate cannot certify (intervals too wide, a group not assessed)
EXIT_LEAKAGE = 4  # audit: patients in more than one split
EXIT_MONITOR_ALERT = 5  # monitor: an alert fired (stderr names measure, group and window of each)
# I/O and internal failures take sysexits.h's EX_IOERR and EX_SOFTWARE: far from every command's own
# small codes, so "the disk is full" can never read as "the gate cannot certify".
EXIT_IO = 74  # reading or writing failed: disk full, permission denied, read-only or vanished storage
EXIT_INTERNAL = 70  # a bug: an unexpected exception (traceback saved to a file)
EXIT_INTERRUPTED = 130  # Ctrl-C

_IO_WORDS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large",
}


def io_error_line(exc: OSError) -> str:
    """``disk full: cannot write /out/checkpoint.pt`` -- what failed, on which path, in one line."""
    what = _IO_WORDS.get(exc.errno or -1) or (exc.strerror or exc.__class__.__name__).lower()
    where = exc.filename if exc.filename is not None else None
    if where is None:
        return f"I/O error: {what}" + ("" if exc.strerror else f" ({exc})")
    verb = "cannot write" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG) else "on"
    return f"I/O error: {what}: {verb} {os.fsdecode(where)}"


def _save_traceback(exc: BaseException) -> str | None:
    try:
        fd, path = tempfile.mkstemp(prefix="xraytriage-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return path
    except OSError:
        return None


def fail(prog: str, message: str, code: int = EXIT_USAGE) -> int:
    """Print ``PROG: MESSAGE`` on stderr and return ``code``: how every command reports an error."""
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def run_guarded(prog: str, call: Callable[[], int], verbose: bool = False) -> int:
    """Run a command; map what escapes it to an exit code and one line on stderr."""
    from xraytriage.utils.errors import TriageError

    try:
        return int(call() or 0)
    except TriageError as exc:  # each class carries its exit code (utils/errors.py)
        return fail(prog, f"{exc.prefix}{exc}", exc.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FileNotFoundError as exc:
        if exc.errno is None:  # our own "X not found (do Y)" message: a usage error
            print(f"{prog}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{prog}: {io_error_line(exc)}", file=sys.stderr)
        return EXIT_IO
    except OSError as exc:
        print(f"{prog}: {io_error_line(exc)}", file=sys.stderr)
        return EXIT_IO
    except Exception as exc:
        saved = _save_traceback(exc)
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        where = f"; traceback in {saved}" if saved else ""
        kind = exc.__class__.__name__
        print(
            f"{prog}: internal error ({kind}: {text}); this is a bug, please report it{where}",
            file=sys.stderr,
        )
        if verbose:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        return EXIT_INTERNAL
