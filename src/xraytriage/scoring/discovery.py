"""Find the scans to score, lazily: a folder tree, a text file of paths, or a manifest.

Nothing here materialises the full list, so a tree of millions of files starts scoring at once and
memory does not grow with its size. Which files are images is decided later, by content, in the
DataLoader workers (``load_image`` sniffs signatures); a file that is not an image is reported in the
errors file rather than silently ignored: as a failure, or, when it is plainly not a scan (a dataset's
readme, label table, DICOMDIR), as skipped (:func:`non_scan_kind`).
"""

from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from xraytriage.utils.errors import UsageError

# Skipped by name wherever they appear: OS/tooling litter, never scans. DICOMDIR is a media index
# (a DICOM object without pixels), not an image.
SYSTEM_NAMES = frozenset(
    {
        "thumbs.db",
        "desktop.ini",
        "dicomdir",
        "$recycle.bin",
        "system volume information",
        "__macosx",
        "lost+found",
        "@eadir",
    }
)
MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet")


def is_hidden_or_system(name: str) -> bool:
    """Dot files, macOS resource forks (``._x``), Windows/NAS system files and folders."""
    return name.startswith((".", "~$")) or name.lower() in SYSTEM_NAMES


OnError = Callable[[str, OSError], None]


def walk_files(root: str | Path, on_error: OnError | None = None) -> Iterator[str]:
    """Regular files under ``root`` (recursively, sorted per folder), hidden/system entries skipped.

    Symbolic links to folders are followed, but every real folder is entered once (keyed by device
    and inode), so a link loop cannot hang the walk and a linked folder is not scored twice.
    A folder (or entry) that cannot be read is passed to ``on_error`` with the error, so the caller
    can record that its scans were not scored; one that vanished meanwhile is not an error.
    """
    root = os.path.abspath(os.fspath(root))
    try:
        st = os.stat(root)
    except OSError as exc:
        if on_error is not None:
            on_error(root, exc)
        return
    seen: set[tuple[int, int]] = {(st.st_dev, st.st_ino)}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if on_error is not None and not isinstance(exc, FileNotFoundError):
                on_error(folder, exc)
            continue
        subdirs: list[str] = []
        for entry in entries:
            if is_hidden_or_system(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    est = entry.stat(follow_symlinks=True)
                    key = (est.st_dev, est.st_ino)
                    if key not in seen:
                        seen.add(key)
                        subdirs.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    yield entry.path
            except OSError as exc:  # permission denied; vanished meanwhile (not an error)
                if on_error is not None and not isinstance(exc, FileNotFoundError):
                    on_error(entry.path, exc)
                continue
        stack.extend(reversed(subdirs))  # depth-first, in name order


def _resolve(entry: str, base: Path) -> str:
    p = Path(entry.strip())
    return os.path.abspath(p if p.is_absolute() else base / p)


def _expand(path: str) -> Iterator[str]:
    if os.path.isdir(path):
        yield from walk_files(path)
    else:
        yield path  # missing files come back as errors from load_image, never silently dropped


def iter_path_list(list_file: str | Path) -> Iterator[str]:
    """One path per line (relative to the list's folder); blank lines and ``#`` comments ignored."""
    p = Path(list_file)
    base = p.resolve().parent
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            text = line.strip()
            if text and not text.startswith("#"):
                yield from _expand(_resolve(text, base))


def iter_manifest(manifest: str | Path) -> Iterator[str]:
    """The ``path`` column of a CSV/TSV/Parquet manifest, read in chunks (relative to its folder)."""
    p = Path(manifest)
    base = p.resolve().parent
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(p)
        if "path" not in pf.schema_arrow.names:
            names = ", ".join(pf.schema_arrow.names)
            raise UsageError(f"{p}: manifest has no 'path' column (columns: {names})")
        for batch in pf.iter_batches(columns=["path"], batch_size=65_536):
            for value in batch.column(0).to_pylist():
                if value:
                    yield from _expand(_resolve(str(value), base))
        return
    with open(p, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        fields = [f.strip() for f in reader.fieldnames or []]
        if "path" not in fields:
            raise UsageError(f"{p}: manifest has no 'path' column (columns: {', '.join(fields)})")
        reader.fieldnames = fields
        for row in reader:
            value = (row.get("path") or "").strip()
            if value:
                yield from _expand(_resolve(value, base))


def input_kind(source: str | Path) -> str:
    """``folder``, ``manifest`` (CSV/TSV/Parquet with a ``path`` column) or ``list`` (text of paths)."""
    p = Path(source)
    if p.is_dir():
        return "folder"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: input not found (give a folder, a text file of paths, or a manifest)")
    return "manifest" if p.suffix.lower() in MANIFEST_SUFFIXES else "list"


def iter_inputs(source: str | Path, on_error: OnError | None = None) -> Iterator[str]:
    """Absolute paths of candidate scans, streamed, in a deterministic order (``on_error``: see
    :func:`walk_files`)."""
    kind = input_kind(source)
    if kind == "folder":
        return walk_files(source, on_error)
    if kind == "manifest":
        return iter_manifest(source)
    return iter_path_list(source)


# Reason code (errors file) of a file that is plainly not a scan: reported, counted apart, not a failure.
NOT_A_SCAN = "not_a_scan"
_TEXT_PROBE = 8192


def non_scan_kind(path: str, reason: str) -> str | None:
    """What a file that failed to decode plainly is, when it is not a scan: ``text``, ``CSV``, ``JSON``,
    ``XML``, ``DICOMDIR`` or ``DICOM <SOP class> without pixel data``; None when it may be a damaged scan.

    A dataset folder holds its LICENSE, readme and label tables beside the images; those should not make
    a run fail. Content decides, never the extension: text is valid UTF-8 without control bytes in its
    first 8 KiB (a binary file that merely failed, e.g. a truncated JPEG, stays a failure), and a DICOM
    without pixel data is skipped only when its SOP class is a registered non-image class (a truncated
    radiograph keeps its image SOP class and stays a failure).
    """
    if reason == "no_pixel_data":
        return _non_image_dicom(path)
    if reason == "not_an_image":
        try:
            with open(path, "rb") as fh:
                head = fh.read(_TEXT_PROBE)
        except OSError:  # missing or unreadable: a failure
            return None
        return _text_kind(head)
    return None


def _text_kind(head: bytes) -> str | None:
    import codecs

    if not head:
        return None
    try:  # incremental: a multi-byte character cut at the end of the probe is not an error
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if any(ch < " " and ch not in "\t\n\r\f" for ch in text):
        return None
    body = text.lstrip()
    if body.startswith(("{", "[")):
        return "JSON"
    if body.startswith("<"):
        return "XML"
    lines = body.splitlines()
    for sep in (",", "\t", ";"):
        if len(lines) >= 2 and lines[0].count(sep) >= 1 and lines[0].count(sep) == lines[1].count(sep):
            return "CSV"
    return "text"


def _non_image_dicom(path: str) -> str | None:
    import pydicom
    from pydicom.uid import UID, MediaStorageDirectoryStorage

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"], force=True)
    except Exception:  # unparsable: a damaged file, not a known kind of non-scan
        return None
    meta = getattr(ds, "file_meta", None)
    value = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    if not value:
        return None
    uid = UID(str(value))
    if uid.type != "SOP Class" or "Image" in uid.name:
        return None
    if uid == MediaStorageDirectoryStorage:
        return "DICOMDIR"
    return f"DICOM {uid.name} without pixel data"


def shard_of(path: str, world_size: int) -> int:
    """Stable rank assignment (CRC32 of the path): independent of order, skips and Python's hash seed."""
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) % world_size if world_size > 1 else 0
