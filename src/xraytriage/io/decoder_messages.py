"""Damage that native decoders report only as text on the C-level stderr.

GDCM's and libjpeg's decoders recover from a bad Huffman code or a cut segment and return a picture,
printing ``Corrupt JPEG data: bad Huffman code`` or ``premature end of data segment`` to file
descriptor 2; no exception, no Python warning. A triage tool must not quietly score such a picture
(a damaged scan called negative is a missed finding), so pixel decoding runs with fd 2 redirected to a
temporary file, and the lines that report damage become a ``corrupt_pixel_data`` failure
(``preprocess.corrupt_pixel_data: accept`` keeps the picture with a note). Other lines are passed on
to the real stderr. The redirection is process-wide, so captures are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator

# libjpeg's warnings about damaged data (jerror.h JWRN_*), as GDCM and libjpeg-turbo print them.
DAMAGE = re.compile(
    r"Corrupt JPEG data|Premature end of JPEG file|Inconsistent progression sequence"
    r"|Invalid SOS parameters|Application transferred too many scanlines",
    re.IGNORECASE,
)
_LOCK = threading.Lock()


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to fd 2 inside the block (the list is filled on exit)."""
    lines: list[str] = []
    with _LOCK, contextlib.ExitStack() as stack:
        try:
            sink = stack.enter_context(tempfile.TemporaryFile())
        except OSError:  # no writable temporary folder: decode without listening rather than not at all
            yield lines
            return
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        stack.callback(os.close, saved)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines.extend(line for line in text.splitlines() if line.strip())
            others = [line for line in lines if not DAMAGE.search(line)]
            if others:
                os.write(2, ("\n".join(others) + "\n").encode("utf-8", "replace"))


def damage_reports(lines: Iterable[str]) -> list[str]:
    """The captured lines that say the data was damaged."""
    return [line.strip() for line in lines if DAMAGE.search(line)]
