"""Append-only CSV journals: the resumable output of a scoring run.

Each batch's rows are formatted into one buffer, written with a single ``write`` to a file opened in
append mode and ``fsync``-ed before the next batch is read, so after a kill (even ``kill -9``) the
file holds whole batches plus, at worst (power loss), one partial last line. Reopening repairs that
line (truncates after the last record end, quoted newlines in file names respected) and returns the
set of paths already present, which the run skips: nothing is lost and nothing is written twice.
Text cells that a spreadsheet would run as a formula are neutralised (``utils.csv_safety``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from xraytriage.utils.csv_safety import safe_row


class JournalMismatch(ValueError):
    """The existing output belongs to a different model or column layout; resuming would mix them."""


# File names are bytes on POSIX: a name that is not UTF-8 reaches Python with surrogate escapes, is
# written back as its original bytes, and must be read the same way or a resume could never start.
ENCODING_ERRORS = "surrogateescape"


def _last_record_end(path: Path, chunk: int = 1 << 20) -> int:
    """Offset just past the last newline that ends a CSV record (not one inside a quoted field).

    A record ends at a newline outside quotes; every ``"`` toggles "inside quotes" (an escaped ``""``
    toggles twice), so a newline ends a record exactly when the quotes before it are even in number.
    Counted in chunks at C speed: one pass over the file, memory bounded.
    """
    end = 0
    quotes = 0
    offset = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            start = 0
            while True:
                nl = block.find(b"\n", start)
                if nl < 0:
                    quotes += block.count(b'"', start)
                    break
                quotes += block.count(b'"', start, nl)
                if quotes % 2 == 0:
                    end = offset + nl + 1
                start = nl + 1
            offset += len(block)
    return end


def _repair_tail(path: Path) -> int:
    """Drop a trailing partial record (quoting respected); returns how many bytes were cut."""
    size = path.stat().st_size
    if size == 0:
        return 0
    keep = _last_record_end(path)
    if keep == size:
        return 0
    with open(path, "rb+") as fh:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return size - keep


def read_rows(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a journal (after its last complete line), streamed."""
    with open(path, encoding="utf-8", errors=ENCODING_ERRORS, newline="") as fh:
        yield from csv.DictReader(fh)


class CsvJournal:
    """One resumable CSV output. ``open()`` -> done paths; ``append(rows)`` per batch."""

    def __init__(self, path: str | Path, columns: Sequence[str], key: str = "path") -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.key = key
        self.repaired_bytes = 0
        self._fd: int | None = None

    def open(self, expect: dict[str, str] | None = None) -> set[str]:
        """Create or repair the file; check its header (and ``expect``-ed column values); return keys."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        done: set[str] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            self.repaired_bytes = _repair_tail(self.path)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            with open(self.path, encoding="utf-8", errors=ENCODING_ERRORS, newline="") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                if header != self.columns:
                    raise JournalMismatch(
                        f"{self.path}: existing file has columns {header}, this run writes {self.columns}; "
                        "it was written by another model or version: choose another output or delete it"
                    )
                key_index = header.index(self.key)
                checks = [(header.index(c), c, v) for c, v in (expect or {}).items()]
                for row in reader:
                    if len(row) != len(header):
                        continue  # cannot happen after repair, but never trust a file blindly
                    for index, column, value in checks:
                        if row[index] != value:
                            raise JournalMismatch(
                                f"{self.path}: holds rows with {column}={row[index]!r} but this run has "
                                f"{column}={value!r}; choose another output or delete it to rescore"
                            )
                    done.add(row[key_index])
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        if fresh:
            self._write([self.columns])
        return done

    def _write(self, rows: Iterable[Sequence[object]]) -> None:
        if self._fd is None:
            raise RuntimeError("journal is not open")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(safe_row(row) for row in rows)
        data = buf.getvalue().encode("utf-8", ENCODING_ERRORS)
        view = memoryview(data)
        try:
            while view:  # a single write for small buffers; loop only on short writes
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as exc:  # name the file: "disk full: cannot write scores.csv", not "[Errno 28]"
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def append(self, rows: Sequence[Sequence[object]]) -> None:
        """Durably append whole rows (call once per batch: one write + fsync)."""
        if rows:
            self._write(rows)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CsvJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
