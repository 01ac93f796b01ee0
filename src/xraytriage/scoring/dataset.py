"""Scoring's implementation of the scan dataset contract: paths streamed to the workers, decoded there.

The main process owns the (lazy) file list and hands paths to the workers a few batches ahead
(:class:`PathStream`), so the list is never materialised. Workers decode with ``load_image`` and build
the input with the bundle's own ``PreprocessConfig`` (``ScanDataset.to_tensor``): exactly the
training preprocessing. A scan that fails becomes a ``ScanFailure`` in its batch instead of an
exception, so one bad file never stops the run; the collate and the worker set-up are the shared ones
(``data.dataset.collate_scans``, ``data.workers.WorkerInit``).

Hostile files are contained per worker: each scan has a time limit (an ``ITIMER_REAL`` alarm whose
default action ends the worker even inside native code that never returns to Python; the run then
records ``timeout`` for it, see ``scoring.crashes``) and each worker a memory cap
(``WorkerInit(memory_mb)``): a decoder that runs into it ends its worker with a death note
(``too_large``) instead of taking the machine.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Iterator

import torch

from xraytriage.config import PreprocessConfig
from xraytriage.data.dataset import DecodedScan, ScanDataset, ScanFailure
from xraytriage.data.workers import renew_memory_cap, worker_memory_cap_mb
from xraytriage.io.errors import OUT_OF_MEMORY
from xraytriage.scope.facts import ScanFacts
from xraytriage.scoring.crashes import leave_death_note
from xraytriage.scoring.discovery import NOT_A_SCAN, non_scan_kind

OUT_OF_MEMORY_EXIT = 75  # a capped worker that ran out of memory ends itself with this status


class PathStream(torch.utils.data.Sampler):
    """A sampler whose "indices" are file paths, drawn lazily from ``source`` (no ``len``)."""

    def __init__(self, source: Callable[[], Iterable[str]]) -> None:
        self.source = source

    def __iter__(self) -> Iterator[str]:
        return iter(self.source())


class StreamedScans(ScanDataset):
    """``dataset[path]`` -> the decoded scan with its UIDs and header facts, or its ``ScanFailure``.

    ``skip_non_scans``: a file that is plainly not a scan (text, a DICOMDIR, ...) gets the reason
    ``not_a_scan`` instead of its decoding failure (``score --strict`` turns this off).
    """

    def __init__(
        self,
        preprocess: PreprocessConfig,
        in_channels: int,
        time_limit_s: float | None = None,
        notes_dir: str | None = None,
        skip_non_scans: bool = True,
    ) -> None:
        super().__init__(preprocess, in_channels)
        self.time_limit_s = time_limit_s
        self.notes_dir = notes_dir  # where a worker that ends itself says why (scoring.crashes)
        self.skip_non_scans = skip_non_scans

    def __getitem__(self, path: str) -> DecodedScan | ScanFailure:  # type: ignore[override]
        # Only in a worker process: there the alarm's default action ends the worker, which the run
        # reports as a timeout; in the main process it would end the run.
        renew_memory_cap()
        timed = bool(self.time_limit_s) and torch.utils.data.get_worker_info() is not None
        if timed:
            signal.setitimer(signal.ITIMER_REAL, float(self.time_limit_s or 0))
        try:
            item = self._load(path)
        finally:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, 0)
        capped_mb = worker_memory_cap_mb()
        if isinstance(item, ScanFailure) and item.detail == OUT_OF_MEMORY and capped_mb:
            # A decoder that ran into the cap can leave this process's heap full (Pillow does), and
            # then even sending the answer fails: end the worker; crash isolation reads the note.
            message = f"decoding needed more than the worker memory cap ({capped_mb} MiB, --worker-memory-mb)"
            leave_death_note(self.notes_dir or "", path, "too_large", message)
            os._exit(OUT_OF_MEMORY_EXIT)
        return item

    def _load(self, path: str) -> DecodedScan | ScanFailure:
        from xraytriage.io import UnreadableImage, load_image

        try:
            image, meta = load_image(path, self.preprocess)
            tensor = self.to_tensor(image)
        except UnreadableImage as exc:
            kind = non_scan_kind(path, exc.reason) if self.skip_non_scans else None
            if kind is not None:
                return ScanFailure(path, NOT_A_SCAN, f"skipped: {kind}, not a scan")
            return ScanFailure.unreadable(path, exc)
        except Exception as exc:  # anything else is still one file's problem, not the run's
            return ScanFailure(path, "internal_error", f"{exc.__class__.__name__}: {exc}")
        facts = ScanFacts.from_meta(meta)
        return DecodedScan(
            tensor, path, sop_uid=meta.sop_uid or "", study_uid=meta.study_uid or "", facts=facts
        )
