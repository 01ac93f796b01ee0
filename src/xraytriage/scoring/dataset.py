"""DataLoader pieces for scoring: a streamed path sampler, a decoding dataset and a failure-tolerant collate.

The main process owns the (lazy) file list and hands paths to the workers a few batches ahead, so the
list is never materialised. Workers decode with ``load_image`` and build the input with
``image_to_tensor`` and the bundle's own ``PreprocessConfig``: exactly the training preprocessing.
A scan that fails becomes an error item in its batch instead of an exception, so one bad file never
stops the run.

Hostile files are contained per worker: each scan has a time limit (an ``ITIMER_REAL`` alarm whose
default action ends the worker even inside native code that never returns to Python; the run then
records ``timeout`` for it, see ``scoring.crashes``) and each worker a memory cap (``RLIMIT_DATA``
above what it inherited: an allocation past it fails as ``too_large`` instead of taking the machine).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from xraytriage.config import PreprocessConfig
from xraytriage.io.errors import OUT_OF_MEMORY
from xraytriage.scope.facts import ScanFacts
from xraytriage.scoring.crashes import leave_death_note
from xraytriage.scoring.discovery import NOT_A_SCAN, non_scan_kind

log = logging.getLogger(__name__)

OUT_OF_MEMORY_EXIT = 75  # a capped worker that ran out of memory ends itself with this status
_capped_mb = 0  # this worker's memory cap (MiB), set by WorkerInit; 0 in the main process


class PathStream(torch.utils.data.Sampler):
    """A sampler whose "indices" are file paths, drawn lazily from ``source`` (no ``len``)."""

    def __init__(self, source: Callable[[], Iterable[str]]) -> None:
        self.source = source

    def __iter__(self) -> Iterator[str]:
        return iter(self.source())


class ScanDataset(torch.utils.data.Dataset):
    """``dataset[path]`` -> dict with the input tensor, or the failure's reason code and message.

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
        self.preprocess = preprocess
        self.in_channels = in_channels
        self.time_limit_s = time_limit_s
        self.notes_dir = notes_dir  # where a worker that ends itself says why (scoring.crashes)
        self.skip_non_scans = skip_non_scans

    def __getitem__(self, path: str) -> dict[str, Any]:  # type: ignore[override]
        # Only in a worker process: there the alarm's default action ends the worker, which the run
        # reports as a timeout; in the main process it would end the run.
        timed = bool(self.time_limit_s) and torch.utils.data.get_worker_info() is not None
        if timed:
            signal.setitimer(signal.ITIMER_REAL, float(self.time_limit_s or 0))
        try:
            item = self._load(path)
        finally:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, 0)
        if item.pop("out_of_memory", False) and _capped_mb:
            # A decoder that ran into the cap can leave this process's heap full (Pillow does), and
            # then even sending the answer fails: end the worker; crash isolation reads the note.
            message = (
                f"decoding needed more than the worker memory cap ({_capped_mb} MiB, --worker-memory-mb)"
            )
            leave_death_note(self.notes_dir or "", path, "too_large", message)
            os._exit(OUT_OF_MEMORY_EXIT)
        return item

    def _load(self, path: str) -> dict[str, Any]:
        from xraytriage.data.tensors import image_to_tensor
        from xraytriage.io import REASONS, UnreadableImage, load_image

        try:
            image, meta = load_image(path, self.preprocess)
            tensor = image_to_tensor(image, self.preprocess, self.in_channels)
        except UnreadableImage as exc:
            kind = non_scan_kind(path, exc.reason) if self.skip_non_scans else None
            if kind is not None:
                return {"path": path, "reason": NOT_A_SCAN, "message": f"skipped: {kind}, not a scan"}
            message = REASONS[exc.reason] + (f" ({exc.detail})" if exc.detail else "")
            oom = exc.detail == OUT_OF_MEMORY
            return {"path": path, "reason": exc.reason, "message": message, "out_of_memory": oom}
        except Exception as exc:  # anything else is still one file's problem, not the run's
            return {"path": path, "reason": "internal_error", "message": f"{exc.__class__.__name__}: {exc}"}
        return {
            "path": path,
            "tensor": tensor,
            "sop_uid": meta.sop_uid or "",
            "study_uid": meta.study_uid or "",
            "facts": ScanFacts.from_meta(meta),
        }


@dataclass
class ScanBatch:
    """Decoded scans stacked for the network, plus the failures of the same batch."""

    paths: list[str]
    sop_uids: list[str]
    study_uids: list[str]
    tensor: torch.Tensor | None
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, message)
    facts: list[ScanFacts] = field(default_factory=list)  # header attributes for the scope check

    def pin_memory(self) -> ScanBatch:
        if self.tensor is not None:
            self.tensor = self.tensor.pin_memory()
        return self


def collate_scans(items: list[dict[str, Any]]) -> ScanBatch:
    ok = [it for it in items if "tensor" in it]
    failures = [(it["path"], it["reason"], it["message"]) for it in items if "tensor" not in it]
    tensor = torch.stack([it["tensor"] for it in ok]) if ok else None
    return ScanBatch(
        paths=[it["path"] for it in ok],
        sop_uids=[it["sop_uid"] for it in ok],
        study_uids=[it["study_uid"] for it in ok],
        tensor=tensor,
        failures=failures,
        facts=[it["facts"] for it in ok],
    )


def _vm_data_bytes() -> int | None:
    """This process's private writable memory (what ``RLIMIT_DATA`` counts), from /proc; None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cap_memory(extra_mb: int) -> bool:
    """Let this process allocate at most ``extra_mb`` MiB beyond what it holds now; False if unsupported.

    ``RLIMIT_DATA`` counts private writable mappings (heap, anonymous mmap) on Linux >= 4.7, not
    shared memory (how workers hand tensors back) nor address space merely reserved, so it caps what a
    decoder can allocate without tripping over torch's large virtual reservations.
    """
    import resource

    current = _vm_data_bytes()
    if extra_mb <= 0 or current is None:
        return False
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = current + extra_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return True


@dataclass
class WorkerInit:
    """Set up one decoding worker: one torch thread, the alarm's default action, the memory cap.

    One torch thread per worker: the workers are the parallelism. Do not call ``cv2.setNumThreads``
    here: in a forked child whose parent had used OpenCV's thread pool it deadlocks for ever
    (``pthread_cond_destroy`` on the inherited pool; seen with a naive loop run before scoring in the
    same process). OpenCV's own fork handling is fine otherwise.
    """

    memory_mb: int = 0

    def __call__(self, _worker_id: int) -> None:
        global _capped_mb
        torch.set_num_threads(1)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        if self.memory_mb and cap_memory(self.memory_mb):
            _capped_mb = self.memory_mb
        elif self.memory_mb:
            log.debug("worker memory cap not supported on this system")
