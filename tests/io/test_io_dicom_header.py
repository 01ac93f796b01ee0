"""Header reading and hostile-file checks of io/dicom.py, one function at a time, in absolute values.

Why beside the load_image tests (test_io_dicom.py, test_io_hostile.py): those show that a refusal
happens; these pin what a user reads in it (the reason code, the file named, the exact detail), each
limit at its boundary (exactly at max_pixels or the inflate ceiling passes, one over fails), the
header facts kept (spacing, UIDs, sex, age, view; a pseudonym, never the raw PatientID) and the
patient values scrubbed from a decoder's message. Small datasets built here, in milliseconds."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from xraytriage.data.pseudonyms import SiteKey
from xraytriage.io import dicom
from xraytriage.io.dicom import (
    Geometry,
    _scrub,
    _spacing,
    _text,
    _uid,
    check_codestream,
    check_pixels,
    decode_pixels,
    first_frame_bytes,
    native_frame,
    read_dataset,
    read_meta,
    refuse_deflate_bomb,
    transfer_syntax,
)
from xraytriage.io.errors import UnreadableImage

PATH = Path("/scans/chest.dcm")
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def _ds(**elements: object) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _image(rows: int = 3, cols: int = 4, **elements: object) -> Dataset:
    """A greyscale 16-bit header (no pixel data unless given)."""
    base = {
        "Rows": rows,
        "Columns": cols,
        "SamplesPerPixel": 1,
        "BitsAllocated": 16,
        "BitsStored": 12,
        "PixelRepresentation": 0,
        "PhotometricInterpretation": "MONOCHROME2",
    }
    return _ds(**{**base, **elements})


def _file(path: Path, ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Path:
    """``ds`` saved with file meta under ``syntax``."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASS, "1.2.3"
    ds.save_as(path, enforce_file_format=True)
    return path


def _refusal(call, *args: object, **kwargs: object) -> UnreadableImage:
    with pytest.raises(UnreadableImage) as info:
        call(*args, **kwargs)
    return info.value


# --- header facts -------------------------------------------------------------------------------


def test_text_is_the_first_value_stripped_and_blank_is_absent():
    ds = _ds(ViewPosition=" PA ", Manufacturer="   ", ImageType=["DERIVED", "PRIMARY"], Modality="")
    assert _text(ds, "ViewPosition") == "PA"
    assert _text(ds, "Manufacturer") is None
    assert _text(ds, "ImageType") == "DERIVED"
    assert _text(ds, "Modality") is None
    assert _text(ds, "BodyPartExamined") is None
    assert _text(_ds(ImageType=[]), "ImageType") is None  # was the text "None"


def test_spacing_prefers_pixel_spacing_and_skips_what_is_not_two_numbers():
    assert _spacing(_ds(PixelSpacing=[0.1, 0.2], ImagerPixelSpacing=[0.3, 0.4])) == (0.1, 0.2)
    assert _spacing(_ds(ImagerPixelSpacing=[0.139, 0.143])) == (0.139, 0.143)
    three = _ds(PixelSpacing=[0.1, 0.2, 0.5], ImagerPixelSpacing=[0.3, 0.4])
    assert _spacing(three) == (0.3, 0.4)
    unreadable = _ds(ImagerPixelSpacing=[0.3, 0.4])
    unreadable.add_new("PixelSpacing", "LO", ["a", "b"])  # two values, not numbers
    assert _spacing(unreadable) == (0.3, 0.4)
    assert _spacing(_ds(PixelSpacing=[0.1, 0.2, 0.5])) is None
    assert _spacing(_ds()) is None


def test_a_uid_is_digits_and_dots_of_at_most_64_or_left_out_with_a_note():
    notes: list[str] = []
    assert _uid(_ds(StudyInstanceUID="1"), "StudyInstanceUID", notes) == "1"
    longest = "1." + "2" * 62
    assert _uid(_ds(StudyInstanceUID=longest), "StudyInstanceUID", notes) == longest
    assert _uid(_ds(), "StudyInstanceUID", notes) is None
    assert notes == []
    bad = _ds()
    bad.add_new("StudyInstanceUID", "UT", longest + "3")
    bad.add_new("SeriesInstanceUID", "LO", "1.2.<script>")
    assert _uid(bad, "StudyInstanceUID", notes) is None
    assert _uid(bad, "SeriesInstanceUID", notes) is None
    assert notes == [
        "StudyInstanceUID is not a valid UID (digits and dots, at most 64); left out",
        "SeriesInstanceUID is not a valid UID (digits and dots, at most 64); left out",
    ]


def _patient() -> Dataset:
    ds = _image(
        rows=2048,
        cols=2500,
        PatientName="Doe^Jane",
        PatientBirthDate="19500101",
        PatientID="SECRET-77",
        PatientSex="F",
        PatientAge="058Y",
        ViewPosition="PA",
        Modality="DX",
        Manufacturer="Acme",
        InstitutionName="St Elsewhere",
        BodyPartExamined="CHEST",
        StudyInstanceUID="1.2.3",
        SeriesInstanceUID="1.2.3.4",
        SOPInstanceUID="1.2.3.4.5",
        ImagerPixelSpacing=[0.139, 0.14],
        StudyDate="20240131",
        ImageType=["DERIVED", "PRIMARY"],
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return ds


def test_read_meta_keeps_the_header_facts_and_a_pseudonym_never_the_raw_id(tmp_path):
    key = SiteKey(b"k" * 32, tmp_path / "site.key")
    meta = read_meta(_patient(), PATH, key)
    assert meta.format == "dicom"
    assert (meta.rows, meta.columns, meta.bits_stored) == (2048, 2500, 12)
    assert (meta.sex, meta.age_years, meta.view, meta.modality) == ("F", 58.0, "PA", "DX")
    assert (meta.manufacturer, meta.institution, meta.body_part) == ("Acme", "St Elsewhere", "CHEST")
    assert (meta.study_uid, meta.series_uid, meta.sop_uid) == ("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert meta.pixel_spacing == (0.139, 0.14)
    assert meta.patient_pseudonym == key.pseudonym("SECRET-77") and len(meta.patient_pseudonym) == 32
    assert (meta.photometric, meta.study_date) == ("MONOCHROME2", "2024-01-31")
    assert meta.not_original == ["derived_image"]
    assert meta.transfer_syntax == JPEG2000Lossless and meta.notes == []
    text = repr(meta) + str(meta.to_dict())
    for secret in ("SECRET-77", "Doe", "Jane", "19500101"):
        assert secret not in text
    assert read_meta(_patient(), PATH).patient_pseudonym is None  # no site key, no pseudonym


def test_read_meta_of_a_bare_header_leaves_every_fact_unknown():
    meta = read_meta(_ds(), PATH)
    assert (meta.rows, meta.columns, meta.bits_stored, meta.transfer_syntax) == (0, 0, None, None)
    assert (meta.sex, meta.age_years, meta.view, meta.pixel_spacing) == ("unknown", None, None, None)
    assert (meta.study_uid, meta.study_date, meta.not_original, meta.notes) == (None, None, [], [])
    no_syntax = _ds(Rows=4, Columns=5)
    no_syntax.file_meta = FileMetaDataset()
    assert read_meta(no_syntax, PATH).transfer_syntax is None
    assert (read_meta(no_syntax, PATH).rows, read_meta(no_syntax, PATH).columns) == (4, 5)


def test_read_meta_notes_a_hostile_uid_and_leaves_it_out():
    ds = _patient()
    ds.add_new("SOPInstanceUID", "LO", "1.2.3;DROP TABLE")
    meta = read_meta(ds, PATH)
    assert meta.sop_uid is None and meta.study_uid == "1.2.3"
    assert meta.notes == ["SOPInstanceUID is not a valid UID (digits and dots, at most 64); left out"]
    ds.add_new("StudyInstanceUID", "LO", "study-1")
    ds.add_new("SeriesInstanceUID", "LO", "1.2 3")
    meta = read_meta(ds, PATH)
    assert (meta.study_uid, meta.series_uid, meta.sop_uid) == (None, None, None)
    assert [note.split(" ")[0] for note in meta.notes] == [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    ]


# --- reading a file -------------------------------------------------------------------------------


def test_a_header_is_read_without_its_pixel_data_and_without_warnings(tmp_path):
    ds = _image(rows=128, cols=128, PatientAge="58 years")  # an invalid AS value: pydicom would warn
    ds.PixelData = np.arange(128 * 128, dtype="<u2").tobytes()
    path = _file(tmp_path / "x.dcm", ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = read_dataset(path)
    assert read.get_item("PixelData", keep_deferred=True).value is None  # 32 kB: read only when needed
    assert read.PatientAge == "58 years" and transfer_syntax(read) == ExplicitVRLittleEndian


def test_a_file_without_preamble_or_file_meta_is_read_with_its_encoding(tmp_path, pydicom_test_file):
    big = read_dataset(Path(pydicom_test_file("ExplVR_BigEndNoMeta.dcm")))
    assert transfer_syntax(big) == ExplicitVRBigEndian
    little = read_dataset(Path(pydicom_test_file("ExplVR_LitEndNoMeta.dcm")))
    assert transfer_syntax(little) == ExplicitVRLittleEndian
    implicit = read_dataset(Path(pydicom_test_file("rtstruct.dcm")))
    assert transfer_syntax(implicit) == ImplicitVRLittleEndian


def test_a_stated_transfer_syntax_is_kept_and_a_missing_one_follows_the_encoding():
    stated = _ds(Rows=1)
    stated.file_meta = FileMetaDataset()
    stated.file_meta.TransferSyntaxUID = JPEG2000Lossless
    stated.set_original_encoding(False, False)
    dicom._ensure_transfer_syntax(stated)
    assert transfer_syntax(stated) == JPEG2000Lossless
    for implicit, little, syntax in [
        (False, False, ExplicitVRBigEndian),
        (True, True, ImplicitVRLittleEndian),
        (False, True, ExplicitVRLittleEndian),
        (None, None, ExplicitVRLittleEndian),
    ]:
        ds = _ds(Rows=1)
        if implicit is not None:
            ds.set_original_encoding(implicit, little)
        dicom._ensure_transfer_syntax(ds)
        assert transfer_syntax(ds) == syntax, (implicit, little)


def test_transfer_syntax_of_a_dataset_without_one_is_empty():
    assert transfer_syntax(_ds()) == ""
    empty = _ds()
    empty.file_meta = FileMetaDataset()
    assert transfer_syntax(empty) == ""


def test_a_damaged_header_is_corrupt_header_with_the_error_named(tmp_path):
    bad = tmp_path / "bad.dcm"
    meta = b"\x02\x00\x10\x00UI\x14\x00" + ExplicitVRLittleEndian.encode() + b"\x00"
    sequence = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"  # undefined length, then no item tag
    bad.write_bytes(b"\0" * 128 + b"DICM" + meta + sequence + b"\x01" * 40)
    err = _refusal(read_dataset, bad)
    assert (err.reason, err.detail) == ("corrupt_header", "OSError: No tag to read at file position D4")
    assert str(bad) in str(err)


def test_a_file_that_ends_before_its_first_element_is_truncated_and_one_element_is_enough(tmp_path):
    head = _file(tmp_path / "head.dcm", _ds())
    meta_only = tmp_path / "meta_only.dcm"
    data = head.read_bytes()
    meta_only.write_bytes(data[: data.index(b"\x08\x00\x16\x00")])  # up to (0008,0016), the first element
    err = _refusal(read_dataset, meta_only)
    assert (err.reason, err.detail) == ("truncated", "the file ends before the first data element")
    assert str(meta_only) in str(err)
    one = _ds()
    one.file_meta = FileMetaDataset()
    one.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    one.file_meta.MediaStorageSOPClassUID = one.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    one.PatientSex = "F"
    one.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    assert read_dataset(tmp_path / "one.dcm").PatientSex == "F"


# --- the inflate ceiling of a deflated dataset -------------------------------------------------------


def _deflated(path: Path, zeros: int) -> tuple[Path, int]:
    """A deflated file and how many bytes its dataset inflates to (measured with zlib, independently)."""
    import zlib

    ds = _ds(PatientSex="F")
    ds.add_new(0x00091010, "OB", bytes(zeros))
    _file(path, ds, DeflatedExplicitVRLittleEndian)
    meta = pydicom.filereader.read_file_meta_info(path)
    start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    return path, len(zlib.decompress(path.read_bytes()[start:], -zlib.MAX_WBITS))


def test_a_deflated_dataset_exactly_at_the_ceiling_is_read_and_one_byte_over_is_too_large(tmp_path):
    path, size = _deflated(tmp_path / "zip.dcm", 4000)
    assert read_dataset(path, max_inflated_bytes=size).PatientSex == "F"
    assert read_dataset(path).PatientSex == "F"  # no ceiling given: none applied
    err = _refusal(read_dataset, path, max_inflated_bytes=size - 1)
    assert (err.reason, err.detail) == ("too_large", f"deflated dataset inflates beyond {size - 1} bytes")
    assert str(path) in str(err)


def test_a_damaged_deflate_stream_is_corrupt_header(tmp_path):
    path, size = _deflated(tmp_path / "zip.dcm", 4000)
    data = bytearray(path.read_bytes())
    meta = pydicom.filereader.read_file_meta_info(path)
    start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    data[start] = 0xFF  # an invalid deflate block type
    path.write_bytes(bytes(data))
    err = _refusal(refuse_deflate_bomb, path, size)
    assert (err.reason, err.detail) == ("corrupt_header", "deflated dataset: error")  # zlib.error
    assert str(path) in str(err)


def test_only_the_file_meta_is_searched_for_the_deflated_syntax(tmp_path):
    """The UID's text in pixel data ending one byte past the first 4096 bytes is not a deflated file."""
    uid = DeflatedExplicitVRLittleEndian.encode()
    ds = _image(rows=64, cols=64)
    ds.PixelData = bytes(64 * 64 * 2)
    path = _file(tmp_path / "plain.dcm", ds)
    data = bytearray(path.read_bytes())
    end = 4097
    assert end - len(uid) > len(data) - 64 * 64 * 2  # inside the pixel data
    data[end - len(uid) : end] = uid
    path.write_bytes(bytes(data))
    refuse_deflate_bomb(path, 1)  # not deflated: nothing to inflate, whatever the ceiling
    assert read_dataset(path, max_inflated_bytes=1).Rows == 64


# --- geometry and the checks before decoding -------------------------------------------------------


def test_geometry_reads_the_header_with_its_defaults():
    geo = Geometry(_image(rows=3, cols=4, PixelRepresentation=1, NumberOfFrames=3), PATH)
    assert (geo.rows, geo.cols, geo.samples, geo.bits_allocated, geo.bits_stored) == (3, 4, 1, 16, 12)
    assert (geo.signed, geo.frames, geo.photometric) == (True, 3, "MONOCHROME2")
    bare = Geometry(_ds(Rows=1, Columns=1, PhotometricInterpretation="monochrome1"), PATH)
    assert (bare.samples, bare.bits_allocated, bare.bits_stored, bare.signed) == (1, 0, 0, False)
    assert (bare.frames, bare.photometric) == (1, "MONOCHROME1")
    assert Geometry(_ds(Rows=1, Columns=1), PATH).photometric == "MONOCHROME2"
    assert Geometry(_ds(Rows=1, Columns=1, BitsAllocated=8), PATH).bits_stored == 8
    assert Geometry(_ds(Rows=1, Columns=1, SamplesPerPixel=3), PATH).samples == 3
    assert Geometry(_ds(Rows=1, Columns=1, SamplesPerPixel=0), PATH).samples == 1
    assert Geometry(_ds(Rows=1, Columns=1, PixelRepresentation=2), PATH).signed is False
    assert Geometry(_ds(Rows=1, Columns=1, NumberOfFrames=0), PATH).frames == 1
    empty_frames = _ds(Rows=1, Columns=1)
    empty_frames.add_new("NumberOfFrames", "IS", "")
    assert Geometry(empty_frames, PATH).frames == 1


def test_a_geometry_that_cannot_be_read_or_is_empty_is_corrupt_header():
    err = _refusal(Geometry, _ds(Columns=4), PATH)
    assert err.reason == "corrupt_header" and err.detail.startswith("image geometry: AttributeError: ")
    assert str(PATH) in str(err)
    bad = _ds(Rows=3, Columns=4)
    bad.add_new("BitsAllocated", "LO", "sixteen")
    assert _refusal(Geometry, bad, PATH).detail.startswith("image geometry: ValueError: ")
    for rows, cols in [(0, 4), (3, 0), (-1, 4)]:
        err = _refusal(Geometry, _ds(Rows=rows, Columns=cols), PATH)
        assert (err.reason, err.detail) == ("corrupt_header", f"Rows={rows}, Columns={cols}")
        assert str(PATH) in str(err)


def test_no_pixel_data_names_the_sop_class():
    err = _refusal(check_pixels, _image(SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11"), PATH, "first", 100)
    assert (err.reason, err.detail) == ("no_pixel_data", "SOP class 1.2.840.10008.5.1.4.1.1.88.11")
    assert str(PATH) in str(err)
    err = _refusal(check_pixels, _image(), PATH, "first", 100)
    assert err.detail == "SOP class unknown SOP class"


@pytest.mark.parametrize("tag", ["PixelData", "FloatPixelData", "DoubleFloatPixelData"])
def test_each_kind_of_pixel_data_is_an_image(tag):
    ds = _image()
    setattr(ds, tag, bytes(96))
    assert check_pixels(ds, PATH, "first", 12).rows == 3


def test_max_pixels_is_inclusive_one_over_is_too_large_and_an_empty_image_corrupt():
    ds = _image(rows=3, cols=4, PixelData=bytes(24))
    assert check_pixels(ds, PATH, "first", 12).cols == 4
    err = _refusal(check_pixels, ds, PATH, "first", 11)
    assert (err.reason, err.detail) == ("too_large", "4x3 > max_pixels=11") and str(PATH) in str(err)
    err = _refusal(check_pixels, _image(rows=0, PixelData=bytes(2)), PATH, "first", 12)
    assert (err.reason, err.detail) == ("corrupt_header", "Rows=0, Columns=4") and str(PATH) in str(err)


def test_multi_frame_is_refused_only_when_asked_and_only_past_one_frame():
    two = _image(NumberOfFrames=2, PixelData=bytes(48))
    assert check_pixels(two, PATH, "first", 12).frames == 2
    err = _refusal(check_pixels, two, PATH, "reject", 12)
    assert (err.reason, err.detail) == ("multiframe", "2 frames")
    assert check_pixels(_image(NumberOfFrames=1, PixelData=bytes(24)), PATH, "reject", 12).frames == 1


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _compressed(rows: int, cols: int, frames: list[bytes], syntax: str, **elements: object) -> Dataset:
    ds = _image(rows, cols, BitsAllocated=8, BitsStored=8, **elements)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(frames)
    return ds


def test_a_jpeg_frame_is_checked_against_max_pixels_inclusive_and_the_header():
    ds = _compressed(6, 8, [_jpeg(8, 6)], JPEGBaseline8Bit)
    check_codestream(ds, PATH, Geometry(ds, PATH), 48)
    err = _refusal(check_codestream, ds, PATH, Geometry(ds, PATH), 47)
    assert (err.reason, err.detail) == ("too_large", "compressed frame is 8x6 > max_pixels=47")
    for rows, cols, samples in [(5, 8, 1), (6, 7, 1), (6, 8, 3)]:
        lying = _compressed(rows, cols, [_jpeg(8, 6)], JPEGBaseline8Bit, SamplesPerPixel=samples)
        err = _refusal(check_codestream, lying, PATH, Geometry(lying, PATH), 1000)
        assert err.reason == "size_mismatch"
        assert err.detail == f"compressed frame is 8x6x1, the header says {cols}x{rows}x{samples}"
        assert str(PATH) in str(err)


def test_a_frame_without_a_size_or_without_a_frame_is_corrupt_pixel_data():
    nothing = _compressed(6, 8, [b"\x00" * 16], JPEGBaseline8Bit)
    err = _refusal(check_codestream, nothing, PATH, Geometry(nothing, PATH), 1000)
    assert (err.reason, err.detail) == ("corrupt_pixel_data", "the compressed frame states no image size")
    unframed = _compressed(6, 8, [b"\x00\x00"], JPEGBaseline8Bit)
    unframed.PixelData = b"\x01\x02\x03\x04"  # not an item sequence
    err = _refusal(check_codestream, unframed, PATH, Geometry(unframed, PATH), 1000)
    assert err.detail == "the compressed pixel data has no readable frame"
    assert err.reason == "corrupt_pixel_data" and str(PATH) in str(err)


def test_uncompressed_or_float_pixel_data_has_no_codestream_to_check():
    native = _image(PixelData=b"\x01\x02\x03\x04")
    native.file_meta = FileMetaDataset()
    native.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    check_codestream(native, PATH, Geometry(native, PATH), 1)
    floats = _image(FloatPixelData=bytes(48))
    floats.file_meta = FileMetaDataset()
    floats.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    check_codestream(floats, PATH, Geometry(floats, PATH), 1)


def _rle(arr: np.ndarray, **elements: object) -> Dataset:
    ds = _image(*arr.shape[:2], **elements)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(RLELossless, arr, encoding_plugin="pydicom")
    return ds


def test_an_rle_frame_needs_one_segment_per_byte_of_each_sample():
    grey = _rle(np.arange(12, dtype=np.uint16).reshape(3, 4), BitsStored=16)
    check_codestream(grey, PATH, Geometry(grey, PATH), 12)  # 2 segments: high and low byte
    rgb = _rle(
        np.zeros((3, 4, 3), np.uint8),
        SamplesPerPixel=3,
        BitsAllocated=8,
        BitsStored=8,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
    )
    check_codestream(rgb, PATH, Geometry(rgb, PATH), 12)  # 3 segments
    grey.BitsAllocated, grey.BitsStored = 8, 8
    err = _refusal(check_codestream, grey, PATH, Geometry(grey, PATH), 12)
    assert (err.reason, err.detail) == (
        "size_mismatch",
        "RLE frame has 2 segments; the header's pixel layout needs 1",
    )
    assert str(PATH) in str(err)
    one_bit = _image(3, 4, BitsAllocated=1, BitsStored=1)
    one_bit.file_meta = FileMetaDataset()
    one_bit.file_meta.TransferSyntaxUID = RLELossless
    one_bit.PixelData = encapsulate([(1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(58)])
    check_codestream(one_bit, PATH, Geometry(one_bit, PATH), 12)  # one segment per started byte
    rgb.PixelData = encapsulate([bytes(64)])  # segment count 0
    err = _refusal(check_codestream, rgb, PATH, Geometry(rgb, PATH), 12)
    assert (err.reason, err.detail) == ("corrupt_pixel_data", "the RLE segment table is invalid")
    assert str(PATH) in str(err)


def test_first_frame_bytes_is_frame_zero_or_none():
    ds = _compressed(6, 8, [b"first", b"second"], JPEGBaseline8Bit, NumberOfFrames=2)
    assert first_frame_bytes(ds, Geometry(ds, PATH)).rstrip(b"\x00") == b"first"
    ds.PixelData = b"\x01\x02\x03\x04"
    assert first_frame_bytes(ds, Geometry(ds, PATH)) is None
    fragments = _compressed(6, 8, [b"one frame!"], JPEGBaseline8Bit)
    fragments.PixelData = encapsulate([b"one frame!"], fragments_per_frame=2, has_bot=False)
    assert first_frame_bytes(fragments, Geometry(fragments, PATH)) == b"one frame!"  # its fragments joined


# --- the uncompressed fast path -------------------------------------------------------------------


def _native_file(path: Path, stored: np.ndarray, dtype: str = "<u2", **elements: object) -> Path:
    bits = np.dtype(dtype).itemsize * 8
    ds = _image(*stored.shape, BitsAllocated=bits, BitsStored=bits, **elements)
    ds.PixelData = stored.astype(dtype).tobytes()
    return _file(path, ds)


def _frame(path: Path) -> np.ndarray | None:
    ds = read_dataset(path)
    return native_frame(ds, path, Geometry(ds, path))


def test_native_frame_reads_the_stored_values_from_the_file_or_from_memory(tmp_path):
    big = np.arange(128 * 128, dtype=np.uint16).reshape(128, 128)  # 32 kB: read from the file
    got = _frame(_native_file(tmp_path / "big.dcm", big))
    assert got.dtype == np.uint16 and np.array_equal(got, big)
    small = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [250, 251, 254, 255]], np.uint8)
    got = _frame(_native_file(tmp_path / "small.dcm", small, "<u1"))
    assert got.dtype == np.uint8 and np.array_equal(got, small)
    signed = np.array([[-32768, -1, 0, 32767]], np.int16)
    got = _frame(_native_file(tmp_path / "signed.dcm", signed, "<i2", PixelRepresentation=1))
    assert got.dtype == np.int16 and np.array_equal(got, signed)
    mono1 = _frame(_native_file(tmp_path / "m1.dcm", small, "<u1", PhotometricInterpretation="MONOCHROME1"))
    assert np.array_equal(mono1, small)


def test_native_frame_is_the_first_of_several_frames_read_without_loading_the_element(tmp_path):
    frames = np.arange(2 * 128 * 128, dtype=np.uint16).reshape(2, 128, 128)
    path = _native_file(tmp_path / "two.dcm", frames[0], NumberOfFrames=2)
    ds = pydicom.dcmread(path)
    ds.PixelData = frames.tobytes()
    ds.save_as(path)
    read = read_dataset(path)
    assert np.array_equal(native_frame(read, path, Geometry(read, path)), frames[0])
    assert read.get_item("PixelData", keep_deferred=True).value is None  # 64 kB not copied into memory
    small = _image(1, 2, BitsStored=16, NumberOfFrames=2, PixelData=np.array([1, 2, 3, 4], "<u2").tobytes())
    small.file_meta = FileMetaDataset()
    small.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert np.array_equal(native_frame(small, PATH, Geometry(small, PATH)), [[1, 2]])


def test_native_frame_sign_extends_fewer_stored_bits_as_pydicom_does(tmp_path):
    values = np.array([[-2048, -5, -1, 0, 5, 2047]], np.int16)
    ds = _image(*values.shape, BitsStored=12, HighBit=11, PixelRepresentation=1)
    ds.PixelData = (values.astype(np.int32) & 0xFFF).astype("<u2").tobytes()  # 12-bit two's complement
    path = _file(tmp_path / "s12.dcm", ds)
    got = _frame(path)
    assert np.array_equal(got, values)
    assert np.array_equal(got, pydicom.dcmread(path).pixel_array)
    unsigned = _image(1, 2, BitsStored=12)
    unsigned.PixelData = np.array([[0xFFF, 5]], "<u2").tobytes()
    assert np.array_equal(_frame(_file(tmp_path / "u12.dcm", unsigned)), [[4095, 5]])


def test_native_frame_clears_bits_above_bits_stored_as_pydicom_does(tmp_path):
    """Old files keep overlays in the unused high bits: they are not pixel values (PS3.5 8.1.1)."""
    ds = _image(1, 3, BitsStored=12)
    ds.PixelData = np.array([[0xF005, 0x1FFF, 7]], "<u2").tobytes()
    path = _file(tmp_path / "overlay.dcm", ds)
    got = _frame(path)
    assert np.array_equal(got, [[5, 4095, 7]]) and got.dtype == np.uint16
    assert np.array_equal(got, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize(
    "elements",
    [
        {"SamplesPerPixel": 3},
        {"BitsAllocated": 32},
        {"BitsAllocated": 1},
        {"BitsStored": 17},
        {"PhotometricInterpretation": "PALETTE COLOR"},
    ],
)
def test_native_frame_leaves_other_layouts_to_pydicom(elements):
    ds = _image(PixelData=bytes(96), **elements)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert native_frame(ds, PATH, Geometry(ds, PATH)) is None


@pytest.mark.parametrize("bits_stored", [1, 16])
def test_native_frame_takes_any_stored_depth_up_to_the_allocated_one(bits_stored):
    ds = _image(1, 2, BitsStored=bits_stored, PixelData=np.array([[1, 0]], "<u2").tobytes())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert np.array_equal(native_frame(ds, PATH, Geometry(ds, PATH)), [[1, 0]])


def test_native_frame_leaves_big_endian_float_and_undefined_length_data_to_pydicom(pydicom_test_file):
    path = Path(pydicom_test_file("MR_small_bigendian.dcm"))
    big = read_dataset(path)
    assert native_frame(big, path, Geometry(big, path)) is None
    floats = _image(FloatPixelData=bytes(48))
    floats.file_meta = FileMetaDataset()
    floats.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert native_frame(floats, PATH, Geometry(floats, PATH)) is None
    undefined = _image(1, 2, PixelData=bytes(4))
    undefined.file_meta = FileMetaDataset()
    undefined.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    undefined["PixelData"].is_undefined_length = True
    assert native_frame(undefined, PATH, Geometry(undefined, PATH)) is None


def test_native_pixel_data_shorter_than_one_frame_is_truncated(tmp_path):
    big = np.zeros((128, 128), np.uint16)
    path = _native_file(tmp_path / "cut.dcm", big)
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the file ends 100 bytes early
    err = _refusal(_frame, path)
    assert (err.reason, err.detail) == ("truncated", "pixel data has 32668 bytes, one frame needs 32768")
    assert str(path) in str(err)
    path.write_bytes(data[: len(data) - 32768])  # the file ends where the pixel data should start
    assert _refusal(_frame, path).detail == "pixel data has 0 bytes, one frame needs 32768"
    ds = _image(129, 128, BitsStored=16, PixelData=big.tobytes())  # the header wants one row more
    path = _file(tmp_path / "short.dcm", ds)
    assert _refusal(_frame, path).detail == "pixel data has 32768 bytes, one frame needs 33024"
    small = _image(3, 4, BitsStored=16, PixelData=bytes(20))  # in memory: 20 of 24 bytes
    small.file_meta = FileMetaDataset()
    small.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    err = _refusal(native_frame, small, PATH, Geometry(small, PATH))
    assert (err.reason, err.detail) == ("truncated", "pixel data has 20 bytes, one frame needs 24")
    assert str(PATH) in str(err)


# --- decoding through pydicom and the errors it raises ----------------------------------------------


def _decodable(rows: int = 2, cols: int = 3, frames: int = 1) -> Dataset:
    stored = np.arange(frames * rows * cols, dtype=np.uint16).reshape(frames, rows, cols)
    ds = _image(rows, cols, BitsStored=16, PixelData=stored.astype("<u2").tobytes())
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-12345", "19500101"
    return ds


def test_decode_pixels_returns_the_first_frame(tmp_path):
    assert np.array_equal(decode_pixels(_decodable(), PATH, "first", 6), [[0, 1, 2], [3, 4, 5]])
    two = decode_pixels(_decodable(frames=2), PATH, "first", 6)
    assert np.array_equal(two, [[0, 1, 2], [3, 4, 5]])
    err = _refusal(decode_pixels, _decodable(frames=2), PATH, "reject", 6)
    assert (err.reason, err.detail) == ("multiframe", "2 frames") and str(PATH) in str(err)


def test_a_decoded_array_of_an_unexpected_shape_is_unsupported_pixels(monkeypatch):
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda ds, index=None: np.zeros(6, np.uint16))
    err = _refusal(decode_pixels, _decodable(), PATH, "first", 6)
    assert (err.reason, err.detail) == ("unsupported_pixels", "unexpected pixel array shape (6,)")
    assert str(PATH) in str(err)


def _failing(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def decoder(*args: object, **kwargs: object) -> np.ndarray:
        raise error

    monkeypatch.setattr(pydicom.pixels, "pixel_array", decoder)


def _decode_refusal(monkeypatch: pytest.MonkeyPatch, error: BaseException, syntax: str) -> UnreadableImage:
    _failing(monkeypatch, error)
    ds = _decodable()
    ds.file_meta.TransferSyntaxUID = syntax
    err = _refusal(decode_pixels, ds, PATH, "first", 6)
    assert str(PATH) in str(err)
    return err


JPEG_HINT = "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"
ANY_HINT = "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg python-gdcm"


@pytest.mark.parametrize(
    ("error", "syntax", "reason", "detail"),
    [
        (NotImplementedError("x"), "1.2.840.10008.1.2.4.50", "missing_codec", f"pip install {JPEG_HINT}"),
        (NotImplementedError("no way"), "1.2.3.4", "unsupported_transfer_syntax", "1.2.3.4: no way"),
        (
            RuntimeError("Plugins are Missing Dependencies"),
            "1.2.840.10008.1.2.4.50",
            "missing_codec",
            f"pip install {JPEG_HINT}",
        ),
        (ValueError("No pixel data decoders"), "1.2.3.4", "missing_codec", f"pip install {ANY_HINT}"),
        (ValueError("there are no decoders"), "1.2.840.10008.1.2.5", "missing_codec", "pylibjpeg-rle"),
        (RuntimeError("No decoder for it"), "1.2.3.4", "unsupported_transfer_syntax", "1.2.3.4: No decoder"),
        (
            RuntimeError("Transfer Syntax is Not Supported"),
            "1.2.3.4",
            "unsupported_transfer_syntax",
            "1.2.3.4: Transfer Syntax is Not Supported",
        ),
        (RuntimeError("option not supported"), "1.2.3.4", "decode_failed", "RuntimeError: option not"),
        (RuntimeError("transfer syntax odd"), "1.2.3.4", "decode_failed", "RuntimeError: transfer syntax"),
        (ValueError("Data is Less Than Expected"), "1.2.3.4", "truncated", "ValueError: Data is Less"),
        (OSError("image file is Truncated"), "1.2.3.4", "truncated", "OSError: image file"),
        (EOFError("Not Enough bytes"), "1.2.3.4", "truncated", "EOFError: Not Enough"),
        (KeyError("Insufficient data"), "1.2.3.4", "truncated", "KeyError: 'Insufficient"),
        (TypeError("reached the End of the stream"), "1.2.3.4", "truncated", "TypeError: reached"),
        (AttributeError("bad marker"), "1.2.3.4", "decode_failed", "AttributeError: bad marker"),
        (ZeroDivisionError("odd"), "1.2.3.4", "decode_failed", "ZeroDivisionError: odd"),
    ],
)
def test_each_decoder_error_becomes_its_reason_with_the_fix(monkeypatch, error, syntax, reason, detail):
    err = _decode_refusal(monkeypatch, error, syntax)
    assert err.reason == reason and detail in err.detail, err.detail
    if reason == "missing_codec":
        assert err.detail.startswith(f"transfer syntax {syntax}: pip install ")


def test_decoder_messages_lose_patient_values(monkeypatch):
    err = _decode_refusal(monkeypatch, RuntimeError("bad frame of Doe^Jane PID-12345\nmore"), "1.2.3.4")
    assert err.detail == "RuntimeError: bad frame of <removed> <removed>"
    err = _decode_refusal(monkeypatch, RuntimeError("no decoder: 19500101"), "1.2.3.4")
    assert err.detail == "1.2.3.4: no decoder: <removed>"
    err = _decode_refusal(monkeypatch, ZeroDivisionError("PID-12345"), "1.2.3.4")
    assert err.detail == "ZeroDivisionError: <removed>"


def test_memory_errors_and_own_refusals_pass_through(monkeypatch):
    _failing(monkeypatch, MemoryError())
    with pytest.raises(MemoryError):
        decode_pixels(_decodable(), PATH, "first", 6)
    own = UnreadableImage(PATH, "truncated", "as raised")
    _failing(monkeypatch, own)
    with pytest.raises(UnreadableImage) as info:
        decode_pixels(_decodable(), PATH, "first", 6)
    assert info.value is own


def test_damage_the_decoder_reports_fails_the_scan_unless_accepted(monkeypatch):
    report = "Corrupt JPEG data: " + "x" * 300
    monkeypatch.setattr(dicom, "damage_reports", lambda messages: [report, "second"])
    err = _refusal(decode_pixels, _decodable(), PATH, "first", 6)
    assert (err.reason, err.detail) == ("corrupt_pixel_data", f"decoder reported: {report[:200]}")
    assert str(PATH) in str(err)
    notes: list[str] = []
    kept = decode_pixels(_decodable(), PATH, "first", 6, corrupt="accept", notes=notes)
    assert np.array_equal(kept, [[0, 1, 2], [3, 4, 5]])
    assert notes == [f"decoder reported damaged data, accepted: {report[:200]}"]
    assert decode_pixels(_decodable(), PATH, "first", 6, corrupt="accept").shape == (2, 3)
    monkeypatch.setattr(dicom, "damage_reports", lambda messages: [])
    notes = []
    decode_pixels(_decodable(), PATH, "first", 6, corrupt="accept", notes=notes)
    assert notes == []


def test_scrub_keeps_the_first_line_at_most_300_characters_without_patient_values():
    ds = _ds(PatientName="Doe^Jane", PatientBirthDate="19500101", PatientID="AB")
    assert _scrub("  AB and Doe^Jane born 19500101\nsecond line  ", ds) == (
        "<removed> and <removed> born <removed>"
    )
    assert _scrub("x" * 400, ds) == "x" * 300
    assert _scrub("", ds) == "" and _scrub("   ", ds) == "   "
    assert _scrub("tile XXXX damaged", _ds()) == "tile XXXX damaged"  # no patient values: nothing removed
    one = _ds(PatientID="A")  # a one-character value would scrub every such letter: kept
    assert _scrub("A Bad frame", one) == "A Bad frame"


def test_scrub_survives_a_value_that_cannot_be_read():
    class Hostile(Dataset):
        def get(self, keyword, default=None):
            if keyword == "PatientName":
                raise ValueError("unreadable")
            return super().get(keyword, default)

    ds = Hostile()
    ds.PatientID = "PID-1"
    assert _scrub("PID-1 failed at XXXX", ds) == "<removed> failed at XXXX"
