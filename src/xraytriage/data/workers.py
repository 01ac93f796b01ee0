"""The one DataLoader ``worker_init_fn`` (:class:`WorkerInit`) for every loader of scans.

Each worker gets its own seeded random streams (augmentation included), one torch thread, the alarm's
default action (the per-scan time limit of scoring ends the worker even inside native code, see
``scoring.dataset``) and, when asked, a memory cap: ``RLIMIT_DATA`` above what the worker inherited,
so an allocation past it fails as ``too_large`` instead of taking the machine. The heap a forked
worker inherited free is reserved first (``utils.glibc_heap``): the limit counts it as used, and a
decoder allocating from it would otherwise go past the cap unseen.
"""

from __future__ import annotations

import gc
import logging
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch

from xraytriage.utils.glibc_heap import reserve_free_heap

log = logging.getLogger(__name__)

_capped_mb = 0  # this worker's memory cap (MiB), set by WorkerInit; 0 in the main process


def worker_memory_cap_mb() -> int:
    """The memory cap this process runs under (MiB); 0: none (the main process, or no cap asked)."""
    return _capped_mb


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


def renew_memory_cap() -> None:
    """Measure again and cap ``worker_memory_cap_mb()`` above what this worker holds now (per scan).

    A cap set once at worker start leaks whatever the worker frees afterwards (a decoder could use
    that room on top of the cap). Renewed before each scan, the cap bounds what one scan's decoding
    may allocate. About 20 us (one read of /proc/self/status). The inherited cyclic garbage, which
    the collector would free at some allocation in the middle of a decode, is collected once by
    ``WorkerInit`` before the first measurement.
    """
    if _capped_mb:
        cap_memory(_capped_mb)


def _seed_streams() -> None:
    """Give each worker (and each epoch) its own numpy, ``random`` and augmentation stream.

    torch hands every worker a distinct seed derived from the loader's generator, which itself is
    seeded from the run seed: reproducible, yet no two workers repeat the same augmentations.
    """
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    dataset = info.dataset if info is not None else None
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


@dataclass
class WorkerInit:
    """Set up one worker: seeded streams, one torch thread, the alarm's default action, the memory cap
    (``memory_mb``; 0: none).

    One torch thread per worker: the workers are the parallelism. Do not call ``cv2.setNumThreads``
    here: in a forked child whose parent had used OpenCV's thread pool it deadlocks for ever
    (``pthread_cond_destroy`` on the inherited pool; seen with a naive loop run before scoring in the
    same process). OpenCV's own fork handling is fine otherwise.
    """

    memory_mb: int = 0

    def __call__(self, _worker_id: int) -> None:
        global _capped_mb
        _seed_streams()
        torch.set_num_threads(1)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        if not self.memory_mb:
            return
        # Free the parent's uncollected garbage now: left to the collector, it goes at some allocation
        # of a later scan's decoding and hands that decoder its room on top of the cap. Then take the
        # heap the parent had freed (which the cap counts as used) out of a decoder's reach.
        gc.collect()
        reserve_free_heap()
        if cap_memory(self.memory_mb):
            _capped_mb = self.memory_mb
        else:
            log.debug("worker memory cap not supported on this system")
