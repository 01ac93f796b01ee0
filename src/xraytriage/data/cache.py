"""Preprocessing cache: decode every scan once, then read resized arrays at memory speed.

Layout of one store (``CACHE_DIR/pp-<config hash>-<dtype>/``):

* ``shard-NNNNN.bin``: append-only files of fixed-size records, one ``image_size`` x ``image_size``
  array each (uint8, uint16 or float32, C order). Each build appends to a new shard, so a record is
  never rewritten while a reader may be mapping it. Readers ``np.memmap`` the shards: every DataLoader
  worker and DDP rank on a machine shares the same page-cache pages instead of holding a copy.
* ``index.json``: written atomically after the shard data is on disk. Header (format, config hash,
  dtype, record size) plus, per absolute source path, ``[size, mtime_ns, shard, slot, crc32]`` for a
  decoded scan or ``[size, mtime_ns, reason, message]`` for an unreadable one.

A record is served only if the source file's size and mtime still match and its CRC32 matched when
this process first read it (``verify_reads="once"``, the default: see :class:`CacheSource` and
docs/cache.md for the exact guarantee; ``"always"`` re-checks every read); any other case falls back to
:func:`xraytriage.io.load_image` for that scan, so the cache can make training faster but never feed it
a wrong image.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xraytriage.config import PreprocessConfig
from xraytriage.io import UnreadableImage, load_image
from xraytriage.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
LOCK_NAME = ".lock"
DTYPES = ("uint16", "uint8", "float32")
# Fields that never change the pixels: mean/std are applied later in image_to_tensor. Every other
# PreprocessConfig field (present or future) is part of the key.
_PIXEL_NEUTRAL_FIELDS = frozenset({"mean", "std"})
_SCALE = {"uint8": 255.0, "uint16": 65535.0}
VerifyMode = Literal["once", "always", "off"]
VERIFY_MODES = ("once", "always", "off")


class CacheError(RuntimeError):
    """A cache problem the user must act on (wrong folder, store in use); message names the fix."""


def config_key(preprocess: PreprocessConfig) -> dict[str, Any]:
    """Everything that determines the cached pixels: pixel-affecting config plus decoder versions."""
    import cv2
    import pydicom

    from xraytriage import __version__

    fields = {k: v for k, v in preprocess.model_dump(mode="json").items() if k not in _PIXEL_NEUTRAL_FIELDS}
    return {
        "format": FORMAT_VERSION,
        "preprocess": fields,
        "versions": {"xraytriage": __version__, "opencv": cv2.__version__, "pydicom": pydicom.__version__},
    }


def config_hash(preprocess: PreprocessConfig) -> str:
    text = json.dumps(config_key(preprocess), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise CacheError(f"cache dtype '{dtype}' not supported; use one of {', '.join(DTYPES)}")


def store_dir(cache_dir: str | Path, preprocess: PreprocessConfig, dtype: str) -> Path:
    _check_dtype(dtype)
    return Path(cache_dir) / f"pp-{config_hash(preprocess)}-{dtype}"


def quantise(image: np.ndarray, dtype: str) -> np.ndarray:
    """float32 [0, 1] -> stored dtype (round to nearest: max error half a step, 1/131070 for uint16)."""
    if dtype == "float32":
        return np.ascontiguousarray(image, dtype=np.float32)
    scaled = np.clip(image, 0.0, 1.0) * np.float32(_SCALE[dtype])
    return np.rint(scaled).astype(dtype)


def dequantise(record: np.ndarray, dtype: str) -> np.ndarray:
    """Stored record -> a new float32 array in [0, 1] (private and writeable: never a view of the map).

    One conversion pass plus an in-place scale: same values as ``record.astype(float32) * (1 / scale)``
    without the second temporary (~30% cheaper at 224 px).
    """
    if dtype == "float32":
        return np.array(record, dtype=np.float32)
    out = record.astype(np.float32)
    out *= np.float32(1.0 / _SCALE[dtype])
    return out


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.bin"


@dataclass
class Index:
    """In-memory form of ``index.json``."""

    config_hash: str
    dtype: str
    image_size: int
    config: dict[str, Any]
    entries: dict[str, list[int]] = field(default_factory=dict)  # path -> size, mtime_ns, shard, slot, crc
    failures: dict[str, list[Any]] = field(default_factory=dict)  # path -> size, mtime_ns, reason, msg

    @property
    def record_bytes(self) -> int:
        return self.image_size * self.image_size * np.dtype(self.dtype).itemsize

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "config_hash": self.config_hash,
                "dtype": self.dtype,
                "image_size": self.image_size,
                "record_bytes": self.record_bytes,
                "config": self.config,
                "entries": self.entries,
                "failures": self.failures,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Index:
        raw = json.loads(text)
        if raw.get("format") != FORMAT_VERSION:
            raise ValueError(f"index format {raw.get('format')!r}, expected {FORMAT_VERSION}")
        index = cls(raw["config_hash"], raw["dtype"], int(raw["image_size"]), raw["config"])
        if raw.get("record_bytes") != index.record_bytes or index.dtype not in DTYPES:
            raise ValueError("record size does not match dtype and image_size")
        index.entries = {str(k): [int(x) for x in v] for k, v in raw["entries"].items() if len(v) == 5}
        index.failures = {str(k): list(v) for k, v in raw["failures"].items() if len(v) == 4}
        return index


def read_index(store: Path) -> Index | None:
    """The store's index, or None when missing or unreadable (a corrupt index is never trusted)."""
    path = store / INDEX_NAME
    if not path.is_file():
        return None
    try:
        return Index.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError) as exc:
        log.warning("cache index %s is corrupt (%s); it will be ignored and rebuilt", path, exc)
        return None


def drop_truncated(store: Path, index: Index) -> int:
    """Cheap structural check: drop entries whose record lies beyond the end of its shard file."""
    sizes: dict[int, int] = {}
    dropped = [
        path
        for path, (_, _, shard, slot, _) in index.entries.items()
        if (slot + 1) * index.record_bytes > sizes.setdefault(shard, _file_size(store / _shard_name(shard)))
    ]
    for path in dropped:
        del index.entries[path]
    if dropped:
        log.warning(
            "cache %s: %d records lie past the end of a truncated shard; ignored", store, len(dropped)
        )
    return len(dropped)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _verify_mode(verify_reads: bool | str) -> str:
    """Accept the old boolean (True: every read, False: never) as well as the mode names."""
    if verify_reads is True:
        return "always"
    if verify_reads is False:
        return "off"
    if verify_reads not in VERIFY_MODES:
        raise ValueError(f"verify_reads must be one of {', '.join(VERIFY_MODES)}, not {verify_reads!r}")
    return str(verify_reads)


class CacheSource:
    """``image_source`` for :class:`~xraytriage.data.dataset.ManifestScans`: cached image or a fresh decode.

    Picklable (holds paths and the index, not open maps), so DataLoader workers each map the shards
    lazily; the mapped pages are shared through the OS page cache.

    ``verify_reads``: ``"once"`` (default) checks a record's CRC32 the first time this object serves it
    and remembers the (shard, slot) as verified; later reads in this process come from the same
    read-only mapping of an append-only shard that the cache never rewrites, so they see the bytes
    that were checked. ``"always"`` checks every read (~30 us per 224 px uint16 record), ``"off"``
    never (benchmarks, ``verify_records``). A record that failed is remembered too and never served.
    """

    def __init__(
        self,
        store: Path,
        index: Index,
        preprocess: PreprocessConfig,
        verify_reads: bool | VerifyMode = "once",
    ):
        self.store = Path(store)
        self.index = index
        self.preprocess = preprocess
        self.verify_reads = _verify_mode(verify_reads)
        self._maps: dict[int, np.ndarray] = {}
        self._verified: set[tuple[int, int]] = set()
        self._bad: set[tuple[int, int]] = set()
        self._misses = 0

    def __getstate__(self) -> dict[str, Any]:
        # A new process maps the shards afresh, so it verifies afresh: checks are per process.
        state = dict(self.__dict__)
        state["_maps"] = {}
        state["_verified"] = set()
        return state

    def __len__(self) -> int:
        return len(self.index.entries)

    def _record(self, shard: int, slot: int) -> np.ndarray:
        records = self._maps.get(shard)
        if records is None:
            size = self.index.image_size
            mm = np.memmap(self.store / _shard_name(shard), dtype=self.index.dtype, mode="r")
            # A plain ndarray view (it keeps the map alive): indexing it costs ~0.2 us, a memmap slice ~3 us.
            records = np.asarray(mm)[: mm.size // (size * size) * size * size].reshape(-1, size, size)
            self._maps[shard] = records
        if slot >= len(records):
            raise ValueError(f"slot {slot} lies past the end of {_shard_name(shard)}")
        return records[slot]

    def _intact(self, shard: int, slot: int, record: np.ndarray, crc: int) -> bool:
        """CRC32 check according to ``verify_reads``; a failure is logged once and remembered."""
        key = (shard, slot)
        if self.verify_reads == "off" or (self.verify_reads == "once" and key in self._verified):
            return True
        if key in self._bad:
            return False
        if zlib.crc32(record) == crc:
            if self.verify_reads == "once":
                self._verified.add(key)
            return True
        self._bad.add(key)
        log.error(
            "cache %s: CRC mismatch for a record; decoding instead (run `xraytriage cache verify`)",
            self.store,
        )
        return False

    def lookup(self, path: str) -> np.ndarray | None:
        """The cached image for ``path`` if present, unchanged on disk and intact; else None."""
        key = os.path.abspath(path)
        entry = self.index.entries.get(key)
        failure = self.index.failures.get(key) if entry is None else None
        if entry is None and failure is None:
            return None
        stat = _stat_key(key)
        if failure is not None:
            if stat is not None and list(stat) == failure[:2]:
                raise UnreadableImage(Path(key), str(failure[2]), str(failure[3]) or None)
            return None
        size, mtime_ns, shard, slot, crc = entry
        if stat != (size, mtime_ns):
            return None
        try:
            record = self._record(shard, slot)
        except (OSError, ValueError):
            log.warning("cache %s: shard %s unreadable; decoding instead", self.store, _shard_name(shard))
            return None
        if not self._intact(shard, slot, record, crc):
            return None
        return dequantise(record, self.index.dtype)

    def __call__(self, index: int, path: str) -> np.ndarray:
        image = self.lookup(path)
        if image is not None:
            return image
        self._misses += 1
        if self._misses == 1:
            log.info(
                "cache %s: a scan is missing or changed since the build; decoding such scans "
                "(run `xraytriage cache build` to add them)",
                self.store.name,
            )
        return load_image(path, self.preprocess)[0]


def find_stores(cache_dir: str | Path, preprocess: PreprocessConfig) -> list[Path]:
    """Stores under ``cache_dir`` built with this preprocessing, best first (float32, then uint16, uint8)."""
    return [s for d in ("float32", "uint16", "uint8") if (s := store_dir(cache_dir, preprocess, d)).is_dir()]


def open_matching_cache(
    cache_dir: str | Path,
    preprocess: PreprocessConfig,
    *,
    verify_reads: bool | VerifyMode = "once",
    dtype: str | None = None,
) -> CacheSource | None:
    """The cache for this preprocessing config (for ``ManifestScans(image_source=...)``), or None.

    ``dtype`` (training passes ``data.cache_dtype``) requires the store of that sample type, so the
    pixels a run trains on do not depend on which other stores happen to exist; a store of another
    dtype is then only named in the log. None takes the best store present (float32, uint16, uint8).
    """
    if dtype is not None:
        _check_dtype(dtype)
    stores = find_stores(cache_dir, preprocess)
    if dtype is not None:
        others = [s for s in stores if not s.name.endswith(f"-{dtype}")]
        stores = [s for s in stores if s.name.endswith(f"-{dtype}")]
        if not stores and others:
            log.warning(
                "data.cache_dtype is %s but %s holds only %s stores for this config; decoding every "
                "epoch (run `xraytriage cache build --dtype %s`, or set data.cache_dtype to %s)",
                dtype,
                cache_dir,
                "/".join(s.name.rsplit("-", 1)[1] for s in others),
                dtype,
                others[0].name.rsplit("-", 1)[1],
            )
            return None
    for store in stores:
        index = read_index(store)
        if index is None or index.config_hash != config_hash(preprocess):
            continue
        drop_truncated(store, index)
        if not index.entries and not index.failures:
            continue
        log.info(
            "using preprocessing cache %s (%d images, %s, %d unreadable listed)",
            store,
            len(index.entries),
            index.dtype,
            len(index.failures),
        )
        return CacheSource(store, index, preprocess, verify_reads)
    log.info(
        "no preprocessing cache in %s matches this config (image_size=%d); decoding every epoch "
        "(build one with `xraytriage cache build`)",
        cache_dir,
        preprocess.image_size,
    )
    return None


# ---------------------------------------------------------------- building


@dataclass
class BuildReport:
    store: Path
    total: int = 0
    reused: int = 0
    decoded: int = 0
    repaired: int = 0
    unreadable: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> reason, message


def _decode_one(args: tuple[str, PreprocessConfig, str]) -> tuple[str, Any, Any, bytes | None, str, str]:
    """Worker: (path, size, mtime_ns, record bytes | None, reason, message). Stat *before* decoding,
    so a file modified during the build is re-decoded by the next one."""
    path, preprocess, dtype = args
    stat = _stat_key(path)
    try:
        image, _ = load_image(path, preprocess)
    except UnreadableImage as exc:
        return path, *(stat or (-1, -1)), None, exc.reason, str(exc)
    return path, *(stat or (-1, -1)), quantise(image, dtype).tobytes(), "", ""


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """One writer at a time per store (build, verify); readers never need the lock."""
    store.mkdir(parents=True, exist_ok=True)
    with open(store / LOCK_NAME, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CacheError(f"{store}: another `xraytriage cache build` is writing this cache") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def verify_records(store: Path, index: Index, progress: bool = False) -> list[str]:
    """Paths whose record fails its CRC32 (or cannot be read): the full, slow integrity check."""
    from tqdm import tqdm

    from xraytriage.utils.progress import show_progress

    source = CacheSource(store, index, PreprocessConfig(image_size=index.image_size), verify_reads="off")
    bad = []
    for path, (_, _, shard, slot, crc) in tqdm(
        list(index.entries.items()), desc="verify", unit="img", disable=not show_progress(progress)
    ):
        try:
            ok = zlib.crc32(source._record(shard, slot)) == crc
        except (OSError, ValueError):
            ok = False
        if not ok:
            bad.append(path)
    return bad


def build_cache(
    paths: Iterable[str | Path],
    cache_dir: str | Path,
    preprocess: PreprocessConfig,
    *,
    dtype: str = "uint16",
    workers: int | None = None,
    verify: bool = True,
    rebuild: bool = False,
    progress: bool = True,
    checkpoint_every: int = 2000,
) -> BuildReport:
    """Decode the scans that are new or changed since the last build into the store; return a report.

    Existing records are checked (truncation always, CRC32 with ``verify``) and bad ones re-decoded.
    The index is saved every ``checkpoint_every`` new images, so an interrupted build keeps its work.
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from xraytriage.utils.progress import show_progress

    store = store_dir(cache_dir, preprocess, dtype)
    wanted = list(dict.fromkeys(os.path.abspath(str(p)) for p in paths))
    report = BuildReport(store=store, total=len(wanted))
    with store_lock(store):
        index = None if rebuild else read_index(store)
        if index is None or index.config_hash != config_hash(preprocess) or index.dtype != dtype:
            index = Index(config_hash(preprocess), dtype, preprocess.image_size, config_key(preprocess))
            for old in store.glob("shard-*.bin"):
                old.unlink()
        report.repaired += drop_truncated(store, index)
        if verify and index.entries:
            bad = verify_records(store, index, progress)
            for path in bad:
                del index.entries[path]
            if bad:
                log.warning("cache %s: %d records failed their CRC; re-decoding them", store, len(bad))
            report.repaired += len(bad)
        _remove_orphan_shards(store, index)

        todo = []
        for path in wanted:
            stat = _stat_key(path)
            entry = index.entries.get(path) or index.failures.get(path)
            if stat is not None and entry is not None and tuple(entry[:2]) == stat:
                report.reused += 1
                failure = index.failures.get(path)
                if failure is not None:
                    report.unreadable[path] = (str(failure[2]), str(failure[3]))
            else:
                todo.append(path)
        if not todo:
            atomic_write_text(store / INDEX_NAME, index.to_json())
            return report

        shard = max((e[2] for e in index.entries.values()), default=-1) + 1
        while (store / _shard_name(shard)).exists():
            shard += 1
        n_workers = workers if workers is not None else (os.cpu_count() or 1)
        jobs = ((p, preprocess, dtype) for p in todo)
        pool = ProcessPoolExecutor(max_workers=n_workers) if n_workers > 1 else None
        results = pool.map(_decode_one, jobs, chunksize=8) if pool else map(_decode_one, jobs)
        slot = 0
        try:
            with open(store / _shard_name(shard), "ab") as out:
                bar = tqdm(
                    results,
                    total=len(todo),
                    desc="cache build",
                    unit="img",
                    disable=not show_progress(progress),
                )
                for path, size, mtime_ns, data, reason, message in bar:
                    index.entries.pop(path, None)
                    index.failures.pop(path, None)
                    if data is None:
                        index.failures[path] = [size, mtime_ns, reason, message]
                        report.unreadable[path] = (reason, message)
                    else:
                        out.write(data)
                        index.entries[path] = [size, mtime_ns, shard, slot, zlib.crc32(data)]
                        slot += 1
                    report.decoded += 1
                    if report.decoded % checkpoint_every == 0:
                        _commit(out, store, index)
                _commit(out, store, index)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        if slot == 0:
            (store / _shard_name(shard)).unlink(missing_ok=True)
    return report


def _commit(out: Any, store: Path, index: Index) -> None:
    """Shard bytes reach the disk before the index that points at them."""
    out.flush()
    os.fsync(out.fileno())
    atomic_write_text(store / INDEX_NAME, index.to_json())


def _remove_orphan_shards(store: Path, index: Index) -> None:
    used = {e[2] for e in index.entries.values()}
    for shard_file in store.glob("shard-*.bin"):
        try:
            number = int(shard_file.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        if number not in used:
            shard_file.unlink()


def store_info(store: Path) -> dict[str, Any] | None:
    """Summary of one store for ``xraytriage cache info``."""
    index = read_index(store)
    if index is None:
        return None
    shards = sorted(store.glob("shard-*.bin"))
    disk = sum(s.stat().st_size for s in shards)
    live = len(index.entries) * index.record_bytes
    return {
        "store": str(store),
        "image_size": index.image_size,
        "dtype": index.dtype,
        "images": len(index.entries),
        "unreadable": len(index.failures),
        "shards": len(shards),
        "disk_bytes": disk,
        "stale_bytes": max(disk - live, 0),
        "preprocess": index.config.get("preprocess", {}),
    }
