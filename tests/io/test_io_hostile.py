"""Decoding hostile files: decompression bombs, header lies, damaged pixel data, memory cap, and the
reasons given for missing and unreadable files (issue 15, items 3, 4 and 15)."""

from __future__ import annotations

import gc
import io
import multiprocessing
import os
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from xraytriage.config import PreprocessConfig
from xraytriage.data.workers import cap_memory
from xraytriage.io import UnreadableImage, load_image
from xraytriage.utils import glibc_heap


def _reason(path: Path, cfg: PreprocessConfig | None = None) -> UnreadableImage:
    with pytest.raises(UnreadableImage) as info:
        load_image(path, cfg or PreprocessConfig(image_size=32))
    assert str(path) in str(info.value)  # every refusal names its file
    return info.value


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals must happen before any decoder allocates: decoding fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the pixel data was decoded")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", forbidden)


def _jpeg_dicom(path: Path, width: int, height: int, rows: int, columns: int) -> Path:
    """A greyscale JPEG baseline DICOM whose header claims ``rows`` x ``columns``."""
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), 90, np.uint8)).save(buf, format="JPEG", quality=50)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4"
    ds.Modality, ds.Rows, ds.Columns = "DX", rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


# --- item 3: decompression bombs and header lies ---------------------------------------------------


def test_a_small_header_over_a_huge_jpeg_is_refused_before_decoding(
    tmp_path: Path, no_pixel_decoding
) -> None:
    bomb = _jpeg_dicom(tmp_path / "bomb.dcm", width=6000, height=5000, rows=16, columns=16)
    assert bomb.stat().st_size < 2_000_000
    err = _reason(bomb)
    assert err.reason == "size_mismatch" and "6000x5000x1" in err.detail and "16x16x1" in err.detail
    # over max_pixels by its own size: too_large, whatever the header says
    assert _reason(bomb, PreprocessConfig(image_size=32, max_pixels=1_000_000)).reason == "too_large"


def test_an_honest_jpeg_still_decodes(tmp_path: Path) -> None:
    image, meta = load_image(_jpeg_dicom(tmp_path / "ok.dcm", 64, 48, rows=48, columns=64))
    assert image.shape == (224, 224) and meta.decode_path == "pydicom"


def test_jpeg2000_and_rle_headers_that_lie_are_refused(
    tmp_path: Path, pydicom_test_file, no_pixel_decoding
) -> None:
    ds = pydicom.dcmread(pydicom_test_file("RG1_J2KR.dcm"))
    ds.Rows, ds.Columns = 16, 16  # the SIZ marker says 1841 x 1955
    ds.save_as(tmp_path / "j2k.dcm")
    err = _reason(tmp_path / "j2k.dcm")
    assert err.reason == "size_mismatch" and "1841x1955" in err.detail
    ds = pydicom.dcmread(pydicom_test_file("MR_small_RLE.dcm"))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7  # the frame has 2 byte segments, not 1
    ds.save_as(tmp_path / "rle.dcm")
    assert _reason(tmp_path / "rle.dcm").reason == "size_mismatch"


def test_a_transfer_syntax_lie_is_refused_before_decoding(tmp_path: Path, no_pixel_decoding) -> None:
    path = _jpeg_dicom(tmp_path / "x.dcm", 64, 48, rows=48, columns=64)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # JPEG bytes under a JPEG 2000 label
    ds.save_as(path)
    assert _reason(path).reason == "corrupt_pixel_data"


def test_a_deflated_dataset_that_inflates_past_the_ceiling_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _deflated_dataset()
    ds.add_new(0x00091010, "OB", bytes(48 << 20))  # 48 MiB of zeros: ~50 kB deflated
    ds.save_as(tmp_path / "zip.dcm", enforce_file_format=True)
    assert (tmp_path / "zip.dcm").stat().st_size < 1_000_000
    cfg = PreprocessConfig(image_size=32, max_pixels=100)  # ceiling 8 x 100 + 64 MiB... of 48 MiB: fine
    assert _reason(tmp_path / "zip.dcm", cfg).reason == "no_pixel_data"
    from xraytriage.io import dicom

    with pytest.raises(UnreadableImage) as info:
        dicom.read_dataset(tmp_path / "zip.dcm", max_inflated_bytes=16 << 20)
    assert info.value.reason == "too_large"
    # prepare's header reader inflates nothing past its own ceiling either: the file gets blanks
    from xraytriage.data.adapters import _common

    assert list(_common.read_dicom_headers([tmp_path / "zip.dcm"], None, False)["sex"]) == ["F"]
    monkeypatch.setattr(_common, "HEADER_INFLATE_LIMIT", 16 << 20)
    assert list(_common.read_dicom_headers([tmp_path / "zip.dcm"], None, False)["sex"]) == ["unknown"]


def test_the_deflate_ceiling_is_eight_bytes_a_pixel_plus_64_mib(tmp_path: Path) -> None:
    ds = _deflated_dataset()
    ds.add_new(0x00091010, "OB", bytes(72 << 20))  # 72 MiB of zeros: past 8 x 1000 + 64 MiB
    ds.save_as(tmp_path / "zip.dcm", enforce_file_format=True)
    err = _reason(tmp_path / "zip.dcm", PreprocessConfig(image_size=32, max_pixels=1000))
    assert err.reason == "too_large" and err.detail == "deflated dataset inflates beyond 67116864 bytes"


def _deflated_dataset() -> pydicom.Dataset:
    """A minimal Secondary Capture header under the Deflated Explicit VR transfer syntax."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientSex = "1.2.840.10008.5.1.4.1.1.7", "1.2.3", "F"
    return ds


def _allocation(mb: int) -> int | str:
    """Allocate ``mb`` MiB: 1 (the block's last byte), or "MemoryError"."""
    try:
        return int(np.ones(mb << 20, dtype=np.uint8)[-1])
    except MemoryError:
        return "MemoryError"


def _in_a_fork(target, *args: object) -> object:
    """Run ``target(*args, queue)`` in a forked child and return what it put on the queue."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, queue))
    child.start()
    try:
        return queue.get(timeout=60)
    finally:
        child.join(60)


def _allocate_under_cap(cap_mb: int, alloc_mb: int, queue: multiprocessing.Queue) -> None:
    capped = cap_memory(cap_mb)
    queue.put((capped, _allocation(alloc_mb)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only")
def test_the_worker_memory_cap_turns_a_huge_allocation_into_memory_error() -> None:
    results = [_in_a_fork(_allocate_under_cap, 64, mb) for mb in (256, 16)]
    assert results == [(True, "MemoryError"), (True, 1)]


def _allocate_after_freeing(renew: bool, queue: multiprocessing.Queue) -> None:
    from xraytriage.data import workers

    inherited = np.ones(256 << 20, dtype=np.uint8)  # what a fork brings along and frees later
    workers.WorkerInit(memory_mb=64)(0)
    del inherited
    if renew:
        workers.renew_memory_cap()
    queue.put(_allocation(160))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only")
def test_the_cap_renewed_per_scan_does_not_grow_by_what_the_worker_freed() -> None:
    """A cap set once at worker start leaked what the worker freed afterwards; renewed before a scan it
    holds."""
    assert [_in_a_fork(_allocate_after_freeing, renew) for renew in (False, True)] == [1, "MemoryError"]


class _Cycle:
    """Garbage only the cyclic collector frees: what a long-lived parent leaves to its forks."""

    def __init__(self) -> None:
        self.me = self
        self.block = np.ones(256 << 20, dtype=np.uint8)


def _allocate_with_inherited_garbage(queue: multiprocessing.Queue) -> None:
    from xraytriage.data import workers

    workers.WorkerInit(memory_mb=64)(0)
    workers.renew_memory_cap()
    gc.collect()  # the collector may run at any allocation of a scan's decoding
    queue.put(_allocation(160))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only")
def test_garbage_a_worker_inherits_is_not_room_under_its_cap() -> None:
    """The full suite's parent held ~100 MiB of cyclic garbage; collected in the middle of a decode,
    it let a 36 MB image through a 24 MiB cap. The worker collects it before measuring."""
    gc.disable()
    try:
        _Cycle()  # unreachable at once, freed only by a collection
        result = _in_a_fork(_allocate_with_inherited_garbage)
    finally:
        gc.enable()
        gc.collect()
    assert result == "MemoryError"


def _capped_worker_allocates(mb: int, reserve: bool, queue: multiprocessing.Queue) -> None:
    from xraytriage.data import workers
    from xraytriage.utils import glibc_heap

    if not reserve:
        glibc_heap.reserve_free_heap = lambda: None  # type: ignore[assignment] # the worker before the fix
        workers.reserve_free_heap = glibc_heap.reserve_free_heap
    workers.WorkerInit(memory_mb=64)(0)
    workers.renew_memory_cap()
    queue.put(_allocation(mb))


def _fork_workers_from_a_parent_with_freed_heap(queue: multiprocessing.Queue) -> None:
    """A parent whose heap holds 200 MiB that earlier work freed and glibc kept (it raises its trim
    threshold as a process frees large blocks), as a test session's or a notebook's does."""
    libc = glibc_heap._libc()
    assert libc is not None
    libc.mallopt(-4, 0)  # M_MMAP_MAX: every block from the heap, wherever this process's heap stands
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: what is freed stays in the heap
    freed = np.ones(200 << 20, dtype=np.uint8)
    del freed
    cases = [(160, True), (16, True), (160, False)]
    queue.put([_in_a_fork(_capped_worker_allocates, mb, reserve) for mb, reserve in cases])


@pytest.mark.skipif(glibc_heap._libc() is None, reason="glibc's allocator only")
def test_heap_a_worker_inherits_free_is_not_room_under_its_cap() -> None:
    """RLIMIT_DATA counts the parent's freed heap as used; unreserved, a decoder could allocate it on top
    of the cap (a 36 MB decode passed a 24 MiB cap after other tests)."""
    capped, small, unreserved = _in_a_fork(_fork_workers_from_a_parent_with_freed_heap)
    assert (capped, small) == ("MemoryError", 1)
    assert unreserved == 1  # the case is real: without the reservation the 160 MiB fit in the freed heap


@pytest.mark.timeout(180)
def test_a_scan_past_the_worker_memory_cap_fails_as_too_large(tmp_path: Path) -> None:
    from support.scoring import make_bundle, read_csv_rows, run_score

    bundle = make_bundle(tmp_path / "m.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((6000, 6000), np.uint8)).save(folder / "big.png")  # 36 MB decoded
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "small.png")
    out = tmp_path / "s.csv"
    cap = ("--workers", "1", "--worker-memory-mb", "24", "--engine", "torch")
    assert run_score(folder, bundle, out, *cap) == 1
    assert [Path(r["path"]).name for r in read_csv_rows(out)] == ["small.png"]
    errors = read_csv_rows(tmp_path / "s.errors.csv")
    assert [(Path(e["path"]).name, e["reason"]) for e in errors] == [("big.png", "too_large")]
    # the worker ended itself and left a death note: the reason names the cap, not a decoder error
    assert errors[0]["message"].startswith("decoding needed more than the worker memory cap (24 MiB")
    image, _ = load_image(folder / "big.png", PreprocessConfig(image_size=32))  # uncapped, it decodes
    assert image.shape == (32, 32)


# --- item 4: damaged but decodable pixel data ------------------------------------------------------


def _flip(src: str, dest: Path, seed: int, flips: int = 3) -> Path:
    data = bytearray(Path(src).read_bytes())
    pixel_bytes = len(pydicom.dcmread(src).PixelData)
    start = len(data) - pixel_bytes
    rng = random.Random(seed)
    for _ in range(flips):
        i = rng.randrange(start + pixel_bytes // 3, len(data) - 10)
        data[i] ^= 0x55
    dest.write_bytes(bytes(data))
    return dest


def test_a_jpeg_the_decoder_calls_corrupt_is_refused_unless_accepted(
    tmp_path: Path, pydicom_test_file
) -> None:
    src = pydicom_test_file("SC_rgb_jpeg_dcmtk.dcm")
    load_image(src)  # intact: decodes
    damaged = _flip(src, tmp_path / "flipped.dcm", seed=0)
    err = _reason(damaged)
    assert err.reason == "corrupt_pixel_data" and "Corrupt JPEG data" in err.detail
    image, meta = load_image(damaged, PreprocessConfig(corrupt_pixel_data="accept"))
    assert image.shape == (224, 224)
    assert any("damaged data, accepted" in note for note in meta.notes)


def test_byte_flipped_real_radiographs_are_refused_as_corrupt(tmp_path: Path, shared_data: Path) -> None:
    src = next((shared_data / "dicom_samples").glob("rsna_*.dcm"))
    # (not every flip is detectable: a changed DC coefficient decodes silently; these three are reported)
    reasons = [_reason(_flip(str(src), tmp_path / f"f{seed}.dcm", seed)).reason for seed in (1, 3, 4)]
    assert reasons == ["corrupt_pixel_data"] * 3


# --- item 15: missing file vs permission denied ----------------------------------------------------


def test_missing_files_and_unreadable_ones_get_their_own_reasons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xraytriage.io import pipeline

    assert _reason(tmp_path / "gone.png").reason == "file_not_found"
    (tmp_path / "folder.png").mkdir()
    assert _reason(tmp_path / "folder.png").reason == "not_an_image"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "locked.png")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pipeline, "sniff_format", denied)
    assert _reason(tmp_path / "locked.png").reason == "permission_denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_a_mode_000_file_is_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    os.chmod(path, 0)
    assert _reason(path).reason == "permission_denied"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra", [0, 1, 2, 3, 7])
def test_inflating_a_deflated_dataset_ends_whatever_follows_the_stream(tmp_path: Path, extra: int) -> None:
    """zlib keeps a byte in ``unconsumed_tail`` once the stream has ended: the size check must stop."""
    from xraytriage.io.codestream import deflated_size_within

    ds = _deflated_dataset()
    ds.PatientAge = "0" * (2 * extra) + "58Y"[: 4 if extra % 2 else 3]
    ds.add_new(0x00091010, "OB", bytes((3 << 20) + 2 * extra))
    ds.save_as(tmp_path / "d.dcm", enforce_file_format=True)
    assert deflated_size_within(tmp_path / "d.dcm", 4 << 20, chunk=1 << 16)
    assert not deflated_size_within(tmp_path / "d.dcm", 2 << 20, chunk=1 << 16)


def test_each_refusal_before_decoding_has_its_reason_and_detail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xraytriage.io import pipeline

    def refused(path: Path) -> tuple[str, str]:
        err = _reason(path)
        return err.reason, err.detail

    png = tmp_path / "scan.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image\n")
    assert refused(tmp_path / "gone.png") == ("file_not_found", "no such file")
    assert refused(png / "under_a_file.png") == ("file_not_found", "no such file")
    assert refused(tmp_path / "folder.png") == ("not_an_image", "not a regular file (a folder or a device?)")
    assert refused(tmp_path / "empty.png") == ("empty_file", "")
    assert refused(tmp_path / "notes.png") == ("not_an_image", "unrecognised file signature")

    real_stat = os.stat

    def search_denied(path, *args, **kwargs):
        if str(path) == str(png):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pipeline.os, "stat", search_denied)
        assert refused(png) == ("permission_denied", "a folder on its path cannot be searched")

    def read_denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pipeline, "sniff_format", read_denied)
    assert refused(png) == ("permission_denied", "cannot open the file for reading")


@pytest.mark.parametrize("loader", ["_load_raster", "_load_dicom"])
def test_any_decoder_failure_leaves_as_one_typed_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pydicom_test_file, loader: str
) -> None:
    from xraytriage.io import pipeline
    from xraytriage.io.errors import OUT_OF_MEMORY

    path = tmp_path / "scan.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    if loader == "_load_dicom":
        path = Path(pydicom_test_file("CT_small.dcm"))
    raised: list[BaseException] = []

    def failing(*args, **kwargs):
        raise raised[-1]

    monkeypatch.setattr(pipeline, loader, failing)
    cases = [
        (MemoryError(), "too_large", OUT_OF_MEMORY),
        (RecursionError(), "corrupt_header", "nesting too deep"),
        (RuntimeError("x" * 300), "decode_failed", "RuntimeError: " + "x" * 200),
        (BaseException("a Rust panic"), "decode_failed", "BaseException: a Rust panic"),
    ]
    for error, reason, detail in cases:
        raised.append(error)
        err = _reason(path)
        assert (err.reason, err.detail) == (reason, detail)
    own = UnreadableImage(path, "truncated", "as raised")
    raised.append(own)
    with pytest.raises(UnreadableImage) as info:
        load_image(path)
    assert info.value is own  # passed on untouched
    raised.append(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        load_image(path)


def test_a_nan_pixel_becomes_black_not_nan(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5], [np.nan, 1.0]], np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    image, _ = load_image(tmp_path / "f.tif", resize=False)
    np.testing.assert_array_equal(image, [[0.0, 0.5], [0.0, 1.0]])
