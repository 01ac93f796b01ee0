"""Behaviour users rely on: bone bright, compressed == uncompressed, reduced JPEG 2000 == full decode,
real hospital DICOMs read with their demographics, and one typed error for everything unreadable."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from xraytriage.config import PreprocessConfig
from xraytriage.io import UnreadableImage, load_image, parse_age, sniff_format
from xraytriage.io.jpeg2000 import choose_level

RADIOGRAPHS = {
    "RG1": ["RG1_UNCI.dcm", "RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"],
    "RG3": ["RG3_UNCI.dcm", "RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"],
}


@pytest.mark.parametrize("series", sorted(RADIOGRAPHS))
def test_monochrome1_radiographs_bone_bright_and_identical_across_compression(series, pydicom_test_file):
    # Whole wavelet levels only: jpeg2000_min_fraction < 1 is tested in test_io_jpeg2000.py.
    cfg = PreprocessConfig(image_size=256, jpeg2000_min_fraction=1.0)
    images = {}
    for name in RADIOGRAPHS[series]:
        image, meta = load_image(pydicom_test_file(name), cfg)
        assert meta.photometric == "MONOCHROME1"
        images[name] = image
    base = images[RADIOGRAPHS[series][0]]
    for name, image in images.items():
        lossy = "J2KI" in name
        diff = np.abs(image - base)
        assert diff.mean() < (0.01 if lossy else 0.005), name
        # The 99th percentile is set by sharp edges (lead markers): the reduced JPEG 2000 decode low-passes
        # with the wavelet filter, the uncompressed path with a box filter.
        assert np.percentile(diff, 99) < 0.07, name
    # Inversion: output brightness falls as the stored value rises (MONOCHROME1: high stored = dark).
    full, _ = load_image(pydicom_test_file(RADIOGRAPHS[series][0]), cfg, resize=False)
    stored = pydicom.dcmread(pydicom_test_file(RADIOGRAPHS[series][0])).pixel_array.astype(np.float64)
    assert np.corrcoef(full.ravel()[::97], stored.ravel()[::97])[0, 1] < -0.9


def test_chest_radiograph_spine_brighter_than_lungs(pydicom_test_file):
    image, _ = load_image(pydicom_test_file("RG1_UNCI.dcm"), PreprocessConfig(image_size=256), resize=False)
    h, w = image.shape
    rows = slice(int(0.3 * h), int(0.55 * h))
    spine = image[rows, int(0.47 * w) : int(0.53 * w)].mean()
    lungs = np.mean(
        [image[rows, int(0.22 * w) : int(0.3 * w)].mean(), image[rows, int(0.7 * w) : int(0.78 * w)].mean()]
    )
    assert spine > lungs + 0.1


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG3_J2KR.dcm", "RG1_J2KI.dcm", "MR2_J2KR.dcm"])
@pytest.mark.parametrize("size", [224, 512])
def test_reduced_jpeg2000_matches_full_decode_and_resize(name, size, pydicom_test_file):
    path = pydicom_test_file(name)
    reduced, meta = load_image(path, PreprocessConfig(image_size=size, jpeg2000_min_fraction=1.0))
    full, full_meta = load_image(path, PreprocessConfig(image_size=size, reduce_jpeg2000=False))
    assert full_meta.decode_path == "pydicom"
    expect_level = choose_level(meta.rows, meta.columns, size, False, 5, 1.0)
    if expect_level:
        assert meta.decode_path == f"jpeg2000_reduced/{1 << expect_level}"
    diff = np.abs(reduced - full)
    # Radiographs: within 1% on average. MR2 (brain MR, narrow window: x20 contrast gain on fine texture)
    # shows the wavelet-vs-box low-pass difference more; full decode vs uncompressed differs there too.
    mean_tol, p99_tol = (0.02, 0.15) if name.startswith("MR2") else (0.01, 0.07)
    assert diff.mean() < mean_tol and np.percentile(diff, 99) < p99_tol, (
        diff.mean(),
        np.percentile(diff, 99),
    )


def test_reduced_jpeg2000_falls_back_to_full_decode_when_the_fast_decoder_fails(
    pydicom_test_file, monkeypatch
):
    from xraytriage.io import jpeg2000

    monkeypatch.setattr(jpeg2000, "decode_reduced", lambda frame, level: None)
    image, meta = load_image(pydicom_test_file("RG3_J2KR.dcm"), PreprocessConfig(image_size=224))
    assert meta.decode_path == "pydicom"
    assert meta.notes == ["reduced JPEG 2000 decode failed; used a full decode"]
    assert image.shape == (224, 224) and image.max() > 0.5


def test_real_hospital_dicoms_decode_with_demographics(shared_data: Path):
    files = sorted((shared_data / "dicom_samples").glob("*.dcm"))
    assert len(files) >= 3
    views = {}
    for path in files:
        image, meta = load_image(path, PreprocessConfig(image_size=224))
        assert image.shape == (224, 224) and image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.05
        assert meta.sex in {"F", "M"}
        assert meta.age_years is not None and 0 < meta.age_years < 120
        assert meta.patient_pseudonym is None  # only prepare, holding the site key, makes pseudonyms
        views[path.name[:4]] = meta.view
    assert views["rsna"] == "AP" and views["siim"] == "PA"


def test_metadata_never_carries_name_or_birth_date(tmp_path, pydicom_test_file):
    ds = pydicom.dcmread(pydicom_test_file("MR_small.dcm"))
    ds.PatientName, ds.PatientBirthDate, ds.PatientID = "Doe^Jane", "19500101", "SECRET-ID-77"
    ds.PatientAge, ds.PatientSex, ds.ViewPosition = "058Y", "F", "PA"
    ds.ImagerPixelSpacing = [0.139, 0.139]
    path = tmp_path / "x.dcm"
    ds.save_as(path)
    _, meta = load_image(path)
    text = repr(meta) + str(meta.to_dict())
    for secret in ("Doe", "Jane", "19500101", "SECRET-ID-77"):
        assert secret not in text
    assert meta.age_years == 58.0 and meta.sex == "F" and meta.view == "PA"
    assert meta.pixel_spacing is not None and meta.patient_pseudonym is None


@pytest.mark.parametrize(
    ("text", "years"), [("058Y", 58.0), ("011M", 11 / 12), ("003W", 3 * 7 / 365.25), ("010D", 10 / 365.25)]
)
def test_age_strings(text, years):
    assert parse_age(text) == pytest.approx(years, abs=1e-3)


def test_dicom_detected_by_content_not_extension(tmp_path, pydicom_test_file):
    for name in ("CT_small.dcm", "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm"):
        target = tmp_path / f"{name}.bin"
        shutil.copy(pydicom_test_file(name), target)
        assert sniff_format(target) == "dicom", name
    image, _ = load_image(tmp_path / "CT_small.dcm.bin")
    assert image.shape == (224, 224)


def test_file_without_file_meta_decodes(pydicom_test_file):
    image, _meta = load_image(pydicom_test_file("OT-PAL-8-face.dcm"), resize=False)
    assert image.shape == (480, 640) and image.std() > 0.05


def _reason(path, cfg=None) -> UnreadableImage:
    with pytest.raises(UnreadableImage) as info:
        load_image(path, cfg)
    assert str(path) in str(info.value)
    return info.value


def test_error_reasons(tmp_path, pydicom_test_file):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert _reason(empty).reason == "empty_file"
    text = tmp_path / "notes.dcm"
    text.write_text("not an image at all\n" * 10)
    assert _reason(text).reason == "not_an_image"
    assert _reason(tmp_path / "missing.dcm").reason == "file_not_found"
    assert _reason(pydicom_test_file("rtstruct.dcm")).reason == "no_pixel_data"
    assert _reason(pydicom_test_file("test-SR.dcm")).reason == "no_pixel_data"
    assert _reason(pydicom_test_file("MR_truncated.dcm")).reason == "truncated"
    big = _reason(pydicom_test_file("RG1_UNCI.dcm"), PreprocessConfig(max_pixels=1000))
    assert big.reason == "too_large"
    multi = _reason(pydicom_test_file("SC_rgb_2frame.dcm"), PreprocessConfig(multiframe="reject"))
    assert multi.reason == "multiframe"
    # truncated pixel data of a compressed file
    data = Path(pydicom_test_file("RG3_J2KR.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    assert _reason(cut).reason in {"truncated", "decode_failed"}
    # a corrupt header: DICM magic, then garbage
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\x01" * 64)
    assert _reason(bad).reason in {"corrupt_header", "no_pixel_data", "truncated"}


def test_unknown_transfer_syntax_is_unsupported(tmp_path, pydicom_test_file):
    ds = pydicom.dcmread(pydicom_test_file("JPEG2000.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    path = tmp_path / "odd.dcm"
    ds.save_as(path)
    err = _reason(path)
    assert err.reason in {"unsupported_transfer_syntax", "missing_codec"}
    assert "1.2.3.4.5.6.7" in str(err)


def test_missing_codec_names_the_package(tmp_path, pydicom_test_file, monkeypatch):
    import pydicom.pixels

    def no_plugins(*args, **kwargs):
        raise RuntimeError(
            "Unable to decompress 'JPEG-LS Lossless' pixel data because all plugins are missing dependencies"
        )

    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_plugins)
    err = _reason(pydicom_test_file("MR_small_jpeg_ls_lossless.dcm"))
    assert err.reason == "missing_codec" and "pip install" in str(err) and "pylibjpeg-libjpeg" in str(err)


def test_padding_value_excluded_and_black(tmp_path, pydicom_test_file):
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    arr = ds.pixel_array.copy()
    arr[:, :20] = -2000
    ds.PixelPaddingValue = -2000
    ds.PixelData = arr.tobytes()
    path = tmp_path / "pad.dcm"
    ds.save_as(path)
    image, _ = load_image(path, PreprocessConfig(normalization="minmax"), resize=False)
    assert np.all(image[:, :20] == 0.0)
    assert image[:, 20:].min() == pytest.approx(0.0, abs=1e-6) and image[:, 20:].max() == pytest.approx(1.0)


@pytest.mark.parametrize("normalization", ["voi", "percentile", "minmax"])
def test_normalizations_give_unit_range(normalization, pydicom_test_file):
    image, meta = load_image(pydicom_test_file("RG3_UNCI.dcm"), PreprocessConfig(normalization=normalization))
    assert image.dtype == np.float32 and image.shape == (224, 224)
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.9
    assert meta.normalization == ("voi_window" if normalization == "voi" else normalization)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_functions_match_pydicom(function, tmp_path, pydicom_test_file):
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = [40.0, 400.0], [80.0, 1500.0], function
    path = tmp_path / "w.dcm"
    ds.save_as(path)
    for index in (0, 1):
        image, _ = load_image(path, PreprocessConfig(voi_window_index=index), resize=False)
        values = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
        ref = apply_voi_lut(values, ds, index=index)
        y_min = -(2.0 ** (ds.BitsStored - 1)) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        y_max = (2.0 ** (ds.BitsStored - 1) - 1) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        ref = (ref - y_min) / (y_max - y_min)
        assert np.abs(image - ref).max() < 2e-3


# --- the pipeline's order on hand-built files: absolute values, no decoder in the way ----------------


def _header(sop_class: str, sop_uid: str, modality: str) -> pydicom.Dataset:
    """The file meta and identifying elements of an uncompressed explicit little-endian file."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop_uid, modality
    return ds


def _dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> Path:
    """An uncompressed little-endian DX file holding ``stored`` (rows x cols, or frames x rows x cols)."""
    ds = _header("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4", "DX")
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


STORED = np.array([[100, 200, 300, 400], [500, 600, 700, 800], [900, 1000, 1100, 4000]], np.uint16)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_slope_intercept_then_window_then_inversion_in_absolute_values(tmp_path, photometric):
    path = _dicom(
        tmp_path / "w.dcm",
        STORED,
        photometric,
        RescaleSlope=2.0,
        RescaleIntercept=-100.0,
        WindowCenter=1000.0,
        WindowWidth=801.0,
    )
    image, meta = load_image(path, resize=False)
    values = STORED * 2.0 - 100.0  # PS3.3 C.11.2.1.2.1: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped
    expected = np.clip((values - 999.5) / 800.0 + 0.5, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    assert meta.normalization == "voi_window" and meta.decode_path == "native"
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)


def test_a_file_without_window_falls_back_to_percentiles_with_a_note(tmp_path):
    path = _dicom(tmp_path / "p.dcm", STORED, RescaleSlope=2.0)
    cfg = PreprocessConfig(percentile_low=10.0, percentile_high=90.0)
    image, meta = load_image(path, cfg, resize=False)
    lo, hi = np.percentile(STORED * 2.0, [10.0, 90.0])
    assert meta.normalization == "percentile"
    assert meta.notes == ["no VOI window or LUT in file; used percentile normalisation"]
    np.testing.assert_allclose(image, np.clip((STORED * 2.0 - lo) / (hi - lo), 0, 1), rtol=0, atol=1e-6)


def test_a_voi_lut_sequence_is_named_in_the_metadata(tmp_path):
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new("LUTData", "US", list(range(4096)))  # identity over 12 bits
    path = _dicom(tmp_path / "l.dcm", STORED, VOILUTSequence=[item])
    image, meta = load_image(path, resize=False)
    assert meta.normalization == "voi_lut"
    np.testing.assert_allclose(image, STORED / 4095.0, rtol=0, atol=1e-6)


def test_an_empty_voi_lut_sequence_leaves_the_window_in_charge(tmp_path):
    path = _dicom(tmp_path / "e.dcm", STORED, VOILUTSequence=[], WindowCenter=1000.0, WindowWidth=801.0)
    image, meta = load_image(path, resize=False)
    assert meta.normalization == "voi_window"
    np.testing.assert_allclose(image, np.clip((STORED - 999.5) / 800.0 + 0.5, 0, 1), rtol=0, atol=1e-6)


def test_minmax_leaves_out_and_blackens_padding_also_after_inversion(tmp_path):
    stored = STORED.copy()
    stored[:, 0] = 0  # padding: would be the darkest value, and white after a MONOCHROME1 inversion
    path = _dicom(tmp_path / "m.dcm", stored, "MONOCHROME1", PixelPaddingValue=0)
    image, _ = load_image(path, PreprocessConfig(normalization="minmax"), resize=False)
    real = stored[:, 1:]
    np.testing.assert_array_equal(image[:, 0], 0.0)
    np.testing.assert_allclose(image[:, 1:], 1.0 - (real - 200.0) / 3800.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("normalization", ["voi", "minmax", "percentile"])
def test_a_scan_that_is_all_padding_is_black(tmp_path, normalization):
    path = _dicom(tmp_path / "a.dcm", np.full((3, 5), 7, np.uint16), PixelPaddingValue=7)
    image, _ = load_image(path, PreprocessConfig(normalization=normalization), resize=False)
    assert image.shape == (3, 5) and np.all(image == 0.0)


def test_padding_stays_out_of_the_resized_image(tmp_path):
    """32 x 64 -> 16 x 32: padding in columns 0-16 covers output columns 0-7 and half of column 8, which
    is padding too (at least half its area); 4 black rows above and below come from the letterbox. The
    rest is the 2 x 2 block means stretched min-max."""
    stored = np.tile(np.arange(64, dtype=np.uint16) * 50 + 100, (32, 1))
    stored[:, :17] = 4095
    path = _dicom(tmp_path / "r.dcm", stored, PixelPaddingValue=4095)
    image, _ = load_image(path, PreprocessConfig(image_size=32, normalization="minmax"))
    assert image.shape == (32, 32)
    body = image[8:24]
    blocks = stored[:, 18:].reshape(16, 2, 23, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(body[:, :9], 0.0)
    np.testing.assert_allclose(body[:, 9:], (blocks - blocks.min()) / np.ptp(blocks), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(image[:8], 0.0)


def test_a_pixel_mostly_padding_after_a_shrink_is_black(tmp_path):
    """64 x 64 -> 16 x 16: in the left half, three quarters of every 4 x 4 block (its rim) is padding;
    each such output pixel is black, even though the block's centre holds real values."""
    stored = np.full((64, 64), 1000, np.uint16)
    stored[:, 32:] = 2000
    rows, cols = np.indices(stored.shape)
    rim = np.isin(rows % 4, [0, 3]) | np.isin(cols % 4, [0, 3])
    stored[rim & (cols < 32)] = 4095
    stored[0, 63] = 3000  # one bright scan pixel on the right: the right half is not flat
    path = _dicom(tmp_path / "g.dcm", stored, PixelPaddingValue=4095)
    image, _ = load_image(path, PreprocessConfig(image_size=16, normalization="minmax"))
    np.testing.assert_array_equal(image[:, :8], 0.0)
    assert image[:, 8:].max() == pytest.approx(1.0) and image[1:, 8:].max() == 0.0


def test_a_modality_lut_sequence_is_applied_before_averaging(tmp_path):
    """Left half alternates stored 0 and 2, right half is 1; the LUT maps 0, 1, 2 to 0, 10, 1000. Averaged
    after the LUT the left half is 500 and the right 10; averaged before, both would be 1 (one value)."""
    stored = np.ones((32, 32), np.uint16)
    stored[:, :16] = np.indices((32, 16)).sum(axis=0) % 2 * 2
    item = pydicom.Dataset()
    item.LUTDescriptor, item.ModalityLUTType = [3, 0, 16], "US"
    item.add_new("LUTData", "US", [0, 10, 1000])
    path = _dicom(tmp_path / "lut.dcm", stored, ModalityLUTSequence=[item])
    image, _ = load_image(path, PreprocessConfig(image_size=16, normalization="minmax"))
    np.testing.assert_allclose(image[:, :8], 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(image[:, 8:], 0.0, rtol=0, atol=1e-6)


def test_multi_frame_uses_the_first_frame_and_says_so_or_is_refused(tmp_path):
    frames = np.stack([STORED, STORED[::-1]])
    path = _dicom(tmp_path / "f.dcm", frames)
    image, meta = load_image(path, PreprocessConfig(normalization="minmax"), resize=False)
    assert meta.frames == 2 and meta.notes == ["multi-frame (2 frames): first frame used"]
    np.testing.assert_allclose(image, (STORED - 100.0) / 3900.0, rtol=0, atol=1e-6)
    assert _reason(path, PreprocessConfig(multiframe="reject")).reason == "multiframe"


def test_a_jpeg2000_whose_codestream_disagrees_with_bits_stored_is_decoded_in_full(
    tmp_path, pydicom_test_file
):
    ds = pydicom.dcmread(pydicom_test_file("RG3_J2KR.dcm"))  # 10-bit codestream
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(tmp_path / "lie.dcm")
    _, meta = load_image(tmp_path / "lie.dcm", PreprocessConfig(image_size=224))
    assert meta.decode_path == "pydicom"


@pytest.mark.parametrize(
    ("name", "size", "mode", "fraction", "factor"),
    [
        # RG1 is 1955 x 1841: letterbox needs the long side to cover 480 (level 2: 489), stretch the short
        # side (level 2 would give 461, so level 1)
        ("RG1_J2KR.dcm", 480, "letterbox", 1.0, 4),
        ("RG1_J2KR.dcm", 480, "stretch", 1.0, 2),
        # RG3 is 1760 square: level 3 (220) covers 0.85 x 224 but not all of 224
        ("RG3_J2KR.dcm", 224, "letterbox", 0.85, 8),
        ("RG3_J2KR.dcm", 224, "letterbox", 1.0, 4),
    ],
)
def test_the_reduced_jpeg2000_level_covers_the_side_that_sets_the_scale(
    name, size, mode, fraction, factor, pydicom_test_file
):
    cfg = PreprocessConfig(image_size=size, resize_mode=mode, jpeg2000_min_fraction=fraction)
    image, meta = load_image(pydicom_test_file(name), cfg)
    assert meta.decode_path == f"jpeg2000_reduced/{factor}" and image.shape == (size, size)


def test_stretch_fills_the_square_and_letterbox_pads_it(tmp_path):
    stored = np.full((16, 32), 1000, np.uint16)  # window maps 1000 to exactly 0.5
    path = _dicom(tmp_path / "s.dcm", stored, WindowCenter=1000.5, WindowWidth=1001.0)
    image, _ = load_image(path, PreprocessConfig(image_size=16, resize_mode="stretch"))
    np.testing.assert_allclose(image, 0.5, rtol=0, atol=1e-6)
    image, _ = load_image(path, PreprocessConfig(image_size=16))
    np.testing.assert_allclose(image[4:12], 0.5, rtol=0, atol=1e-6)
    assert np.all(image[:4] == 0.0) and np.all(image[12:] == 0.0)


def _rgb_dicom(path: Path, rgb: np.ndarray) -> Path:
    ds = _header("1.2.840.10008.5.1.4.1.1.7", "1.2.3.5", "OT")
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_colour_dicom_is_bt601_luma_over_full_scale_or_stretched(tmp_path):
    """32 x 32 RGB: left half red, right half green, a white 2 x 2 corner; 16 x 16 after a 2x shrink.
    Luma (BT.601): red 0.299, green 0.587, white 1."""
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16, 0] = 255
    rgb[:, 16:, 1] = 255
    rgb[:2, 30:] = 255
    path = _rgb_dicom(tmp_path / "c.dcm", rgb)
    expected = np.full((16, 16), 0.299)
    expected[:, 8:] = 0.587
    expected[0, 15] = 1.0
    image, meta = load_image(path, PreprocessConfig(image_size=16))
    assert image.shape == (16, 16) and meta.normalization == "full_scale"
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)
    image, meta = load_image(path, PreprocessConfig(image_size=16, normalization="minmax"))
    assert meta.normalization == "minmax"
    np.testing.assert_allclose(image, (expected - 0.299) / 0.701, rtol=0, atol=1e-6)
    cfg = PreprocessConfig(
        image_size=16, normalization="percentile", percentile_low=1.0, percentile_high=99.0
    )
    image, _ = load_image(path, cfg)
    lo, hi = np.percentile(expected, [1.0, 99.0])
    np.testing.assert_allclose(image, np.clip((expected - lo) / (hi - lo), 0, 1), rtol=0, atol=1e-6)


def test_a_window_index_past_the_last_window_uses_the_last_with_a_note(tmp_path):
    path = _dicom(tmp_path / "w.dcm", STORED, WindowCenter=[1000.0, 2000.5], WindowWidth=[100.0, 4001.0])
    image, meta = load_image(path, PreprocessConfig(voi_window_index=5), resize=False)
    assert meta.notes == ["voi_window_index=5 not present; used window 1"]
    np.testing.assert_allclose(image, np.clip((STORED - 2000.0) / 4000.0 + 0.5, 0, 1), rtol=0, atol=1e-6)


def test_a_shrink_within_the_reducing_gap_averages_stored_values_once(tmp_path):
    """96 x 96 -> 16 x 16 (a factor of 6), gap 16: one exact area average of the stored integers, rounded
    once; a window of width 65536 from 0 then shows it as value / 65536."""
    stored = np.random.default_rng(0).integers(0, 4096, (96, 96)).astype(np.uint16)
    path = _dicom(
        tmp_path / "g.dcm", stored, WindowCenter=32768.0, WindowWidth=65536.0, VOILUTFunction="LINEAR_EXACT"
    )
    image, _ = load_image(path, PreprocessConfig(image_size=16, resize_reducing_gap=16.0))
    block_means = stored.reshape(16, 6, 16, 6).mean(axis=(1, 3))
    assert np.abs(image * 65536.0 - block_means).max() <= 0.5 + 1e-2
