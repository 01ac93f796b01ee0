"""Keep a forked worker's inherited free heap from becoming room beyond its memory cap (glibc only).

A forked worker shares its parent's heap, free chunks included. ``RLIMIT_DATA`` already counts those
chunks (they lie inside the heap's mapping), so a decoder that allocates from them grows nothing the
limit sees: a long-lived parent (a notebook, a test session) with its freed heap let a 36 MB image
through a 24 MiB cap. :func:`reserve_free_heap` takes that free heap out of play before the cap is
measured: it returns what it can to the kernel (``malloc_trim``), then allocates the free chunks that
remain and never frees them. They are pages ``malloc_trim`` already gave back, so holding them costs
address space, not memory. What the worker frees itself stays in its heap for the next scan to reuse
(glibc's mmap threshold is left to adjust itself): fixing the threshold so that every large buffer is
mapped afresh closed that room too, but cost decoding 1.2-1.5x its CPU time (page faults on fresh
pages; docs/security.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

_SMALLEST = 512  # smaller free chunks (a few MiB in all) are left: below that, scanning costs more
_MAX_CALLS = 1_000_000  # bound on the work, whatever the heap looks like (a few seconds at most)

_reserved: list[int] = []  # addresses held for the life of the worker


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """glibc, with the signatures used here; None on other C libraries (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only: musl and macOS lack it
    except (OSError, AttributeError, TypeError):
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_ssize_t]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def _heap_size() -> int:
    """Size of the main heap (``[heap]`` in /proc/self/maps); 0 when it has none or it cannot be read.

    The first size tried is the largest power of two within it: a request that neither the heap nor
    a fresh mapping could serve would make glibc move this thread to another arena, out of the heap
    being reserved.
    """
    try:
        with open("/proc/self/maps", encoding="ascii") as fh:
            for line in fh:
                if line.rstrip().endswith("[heap]"):
                    start, _, end = line.split()[0].partition("-")
                    return int(end, 16) - int(start, 16)
    except (OSError, ValueError):
        return 0
    return 0


def reserve_free_heap() -> int | None:
    """Take the main heap's free chunks out of play; the bytes reserved, or None without glibc.

    A chunk counts as free heap when ``malloc`` serves it below the current program break (from the
    bins or the top chunk); a request the heap cannot serve extends the heap or is mapped afresh, is
    freed again, and the size tried is halved.
    """
    libc = _libc()
    if libc is None:
        return None
    libc.malloc_trim(0)
    heap = _heap_size()
    size, calls, reserved = 1 << max(heap.bit_length() - 1, 0), 0, 0
    while size >= _SMALLEST and calls < _MAX_CALLS:
        calls += 1
        brk = libc.sbrk(0) or 0
        address = libc.malloc(size)
        if address and address + size <= brk:
            _reserved.append(address)
            reserved += size
            continue
        if address:
            libc.free(address)
        size //= 2
    libc.malloc_trim(0)
    log.debug("reserved %d bytes of inherited free heap in %d chunks", reserved, len(_reserved))
    return reserved
