"""``score --watch INBOX``: keep scoring a folder a DICOM router drops files into.

- A file is taken only once complete: its size and modification time have not changed for
  ``settle_s`` seconds (a router still writing keeps changing them), it is not empty, and its name does
  not end in an in-progress suffix (``.part``, ``.partial``, ``.tmp``, ``.filepart``, ``.crdownload``).
  Routers that write under such a name and rename when done are safe with ``settle_s = 0``: the file is
  then taken at the first listing after the rename. (Stability alone cannot see a writer that pauses
  longer than ``settle_s``; the rename convention can.)
- Exactly once across restarts: the scores and errors journals of ``score`` are the record (a path with
  a row is never scored again, even after kill -9), and DICOM results are written before their row, under
  UIDs derived from the source, so a batch cut short is redone into the very same objects.
- SIGTERM / SIGINT: the batch in flight is finished and journaled, then the watch ends (exit as score).
- With a destination, the DICOM results of each batch are sent as soon as they are written; a send
  journal (``sent.csv`` in the results folder) keeps each object sent once, and objects written before a
  kill but not yet sent are sent at the next start.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xraytriage.scoring.discovery import walk_files
from xraytriage.scoring.runner import ScoreOptions, ScoreSummary, ScoringRun

log = logging.getLogger(__name__)

IN_PROGRESS_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload")
SENT_JOURNAL = "sent.csv"


@dataclass(frozen=True)
class WatchOptions:
    poll_s: float = 1.0  # how often the inbox is listed
    settle_s: float = 1.0  # unchanged size and mtime for this long = the file is complete
    idle_exit_s: float | None = None  # end after this long without a new file (None: watch for ever)


class Inbox:
    """Which files in the inbox are complete: seen with the same (size, mtime) for ``settle_s``."""

    def __init__(self, folder: Path, settle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder, self.settle_s, self.clock = folder, settle_s, clock
        self.seen: dict[str, tuple[tuple[int, int], float]] = {}  # path -> (size, mtime_ns), since

    def ready(self) -> list[str]:
        """Complete files, in discovery order (every call re-lists the folder)."""
        now, out, present = self.clock(), [], set()
        for path in walk_files(self.folder):
            if path.lower().endswith(IN_PROGRESS_SUFFIXES):
                continue
            try:
                st = os.stat(path)
            except OSError:  # moved away between the listing and now
                continue
            present.add(path)
            signature = (st.st_size, st.st_mtime_ns)
            previous = self.seen.get(path)
            if previous is None or previous[0] != signature:
                self.seen[path] = (signature, now)
            elif st.st_size > 0 and now - previous[1] >= self.settle_s:
                out.append(path)
        for gone in set(self.seen) - present:
            del self.seen[gone]
        return out


class SentJournal:
    """Names of result objects already sent (one CSV line each, fsync'd): each object is sent once."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / SENT_JOURNAL
        self.done: set[str] = set()
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.done = {row[0] for row in csv.reader(fh) if len(row) >= 2}

    def record(self, name: str, status: str) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow([name, status])
            fh.flush()
            os.fsync(fh.fileno())
        self.done.add(name)


@contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[None]:
    """SIGTERM / SIGINT set ``event`` instead of killing: the batch in flight completes first."""
    previous = {sig: signal.signal(sig, lambda *_: event.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class WatchRun(ScoringRun):
    """A scoring run whose input is an inbox that keeps filling; one engine, journals and lock for all."""

    def __init__(self, opts: ScoreOptions, watch: WatchOptions, sender: Any = None) -> None:
        super().__init__(opts)
        self.watch = watch
        self.sender = sender
        self.stop = threading.Event()
        self.sent: SentJournal | None = None
        self.batches = 0

    def _score_all(self) -> None:
        """Score the inbox until stopped, with a bar counting scans (an inbox has no total to show)."""
        from tqdm import tqdm

        from xraytriage.utils.progress import show_progress

        self.bar = tqdm(
            desc=f"watching {Path(self.opts.input).name}",
            unit="scan",
            disable=not (show_progress(self.opts.progress) and self.ctx.is_main),
            dynamic_ncols=True,
        )
        try:
            self._watch_inbox()
        finally:
            self.bar.close()

    def _watch_inbox(self) -> None:
        inbox = Inbox(Path(self.opts.input), self.watch.settle_s)
        if self.sender is not None and self.opts.dicom_out is not None:
            self.sent = SentJournal(Path(self.opts.dicom_out))
            self._send_pending()  # written before a kill, not sent yet
        idle_since = time.monotonic()
        log.info("watching %s (Ctrl-C or SIGTERM ends after the batch in flight)", self.opts.input)
        with stop_on_signals(self.stop):
            while not self.stop.is_set():
                fresh = [p for p in inbox.ready() if p not in self.queued and not self._already_done(p)]
                if fresh:
                    for start in range(0, len(fresh), self.opts.batch_size):
                        self._score_paths(fresh[start : start + self.opts.batch_size])
                        self._send_pending()
                        if self.stop.is_set():
                            break
                    idle_since = time.monotonic()
                elif (
                    self.watch.idle_exit_s is not None
                    and time.monotonic() - idle_since >= self.watch.idle_exit_s
                ):
                    break
                else:
                    self.stop.wait(self.watch.poll_s)

    def _score_paths(self, paths: list[str]) -> None:
        """One batch, exactly as ``score`` does it (a dead decoding worker isolates its culprit)."""
        from xraytriage.scoring.crashes import worker_died

        for path in paths:
            self.queued[path] = False
        try:
            for result in self._infer(self._loader(iter(paths), self.opts.workers, len(paths))):
                self._process(result)
        except RuntimeError as exc:
            if self.opts.workers == 0 or not worker_died(exc):
                raise
            self._isolate_crash()
        self.batches += 1

    def _send_pending(self) -> None:
        if self.sender is None or self.sent is None or self.opts.dicom_out is None:
            return
        from xraytriage.pacs.send import RetryPolicy, iter_objects, send_paths

        pending = [p for p in iter_objects(Path(self.opts.dicom_out)) if p.name not in self.sent.done]
        if not pending:
            return
        report = send_paths(self.sender, pending, RetryPolicy(), on_result=self._sent)
        if report.failed:
            log.warning("%s (xraytriage send DIR retries the failed ones)", report.text())

    def _sent(self, result: Any) -> None:
        assert self.sent is not None
        self.sent.record(Path(result.path).name, result.status)


def watch(opts: ScoreOptions, watch_opts: WatchOptions, sender: Any = None) -> ScoreSummary:
    """Score ``opts.input`` (a folder) as files arrive, until SIGTERM/SIGINT or ``idle_exit_s``."""
    return WatchRun(opts, watch_opts, sender).run()
