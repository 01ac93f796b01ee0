"""Stored values -> modality values -> VOI -> grey, checked in absolute values on hand-built datasets.

Why not only the reference comparison (tests/io/test_io_reference.py): it normalises min-max before
comparing, which hides any linear error (a slope ignored, an intercept added twice). Here every output
is the number the DICOM standard (PS3.3 C.11) gives for a known slope, intercept, LUT or window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from xraytriage.io.dicom import _as_list, is_colour, modality_lut, padding_mask, to_grey, voi, window
from xraytriage.io.errors import UnreadableImage

STORED = np.array([[0, 1, 100], [1000, 4095, 7]], dtype=np.uint16)


def _ds(**elements) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _lut(first: int, data: list[int], bits: int = 16) -> Dataset:
    return _ds(LUTDescriptor=[len(data), first, bits], LUTData=data, ModalityLUTType="US")


@pytest.mark.parametrize(
    "slope,intercept",
    [(2.0, 0.0), (1.0, -1024.0), (0.5, 10.0), (1.0, 0.0), (-1.0, 4095.0), (0.25, 0.0)],
)
def test_rescale_slope_and_intercept_in_absolute_values(slope, intercept):
    ds = _ds(RescaleSlope=slope, RescaleIntercept=intercept)
    out = modality_lut(STORED, ds)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, STORED.astype(np.float64) * slope + intercept)


def test_missing_rescale_is_identity():
    np.testing.assert_array_equal(modality_lut(STORED, Dataset()), STORED.astype(np.float32))


def test_modality_lut_sequence_is_applied_not_skipped():
    """Entries 10..13 map to 100..400; values outside the table take its first or last entry."""
    ds = _ds(ModalityLUTSequence=[_lut(10, [100, 200, 300, 400])], BitsStored=16, PixelRepresentation=0)
    stored = np.array([[8, 10, 11], [13, 15, 12]], dtype=np.uint16)
    np.testing.assert_array_equal(modality_lut(stored, ds), [[100, 100, 200], [400, 400, 300]])
    ds.RescaleSlope, ds.RescaleIntercept = 3.0, 5.0  # the sequence wins over slope/intercept
    np.testing.assert_array_equal(modality_lut(stored, ds), [[100, 100, 200], [400, 400, 300]])


def test_unreadable_modality_lut_falls_back_to_slope_and_intercept():
    item = Dataset()
    item.LUTData = [1, 2]  # no LUTDescriptor
    ds = _ds(ModalityLUTSequence=[item], RescaleSlope=2.0, RescaleIntercept=1.0)
    np.testing.assert_array_equal(modality_lut(np.array([0, 3]), ds), [1.0, 7.0])


def _two_voi_luts() -> Dataset:
    rising = _ds(LUTDescriptor=[3, 0, 8], LUTData=[0, 128, 255])
    falling = _ds(LUTDescriptor=[3, 0, 8], LUTData=[255, 51, 0])
    return _ds(VOILUTSequence=[rising, falling], BitsStored=8, PixelRepresentation=0)


def test_the_chosen_voi_lut_of_several_is_the_one_applied():
    ds, notes = _two_voi_luts(), []
    values = np.array([0.0, 1.0, 2.0, 7.0])
    np.testing.assert_allclose(voi(values, ds, 0, notes), [0.0, 128 / 255, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(voi(values, ds, 1, notes), [1.0, 0.2, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(voi(values, ds, 9, notes), [1.0, 0.2, 0.0, 0.0], atol=1e-6)  # the last
    assert notes == []


def test_a_voi_lut_with_12_bit_output_is_scaled_by_its_own_depth():
    ds = _ds(VOILUTSequence=[_ds(LUTDescriptor=[2, 100, 12], LUTData=[0, 4095])], BitsStored=12)
    np.testing.assert_allclose(voi(np.array([99.0, 100.0, 101.0]), ds, 0, []), [0.0, 0.0, 1.0], atol=1e-6)


def test_unreadable_voi_lut_falls_back_to_the_window_with_a_note():
    item = Dataset()
    item.LUTData = [0, 1]
    ds = _ds(VOILUTSequence=[item], WindowCenter=10.5, WindowWidth=11.0)
    notes: list[str] = []
    out = voi(np.array([0.0, 5.0, 10.0, 15.0, 20.0]), ds, 0, notes)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert notes == ["VOI LUT Sequence unreadable; used the window or percentile"]


def test_linear_window_in_absolute_values():
    """PS3.3 C.11.2.1.2.1: below c - 0.5 - (w-1)/2 -> 0, above c - 0.5 + (w-1)/2 -> 1, linear between."""
    values = np.array([74.0, 74.5, 99.5, 124.5, 125.0])
    np.testing.assert_allclose(window(values, 100.0, 51.0, "LINEAR"), [0, 0, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_allclose(window(values, 100.0, 51.0, ""), [0, 0, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_allclose(window(values, 100.0, 51.0, "linear"), [0, 0, 0.5, 1, 1], atol=1e-6)


def test_linear_exact_window_in_absolute_values():
    """C.11.2.1.3.2: (x - (c - w/2)) / w."""
    values = np.array([74.0, 75.0, 100.0, 125.0, 126.0])
    out = window(values, 100.0, 50.0, "LINEAR_EXACT")
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-6)
    assert out.dtype == np.float32


def test_sigmoid_window_in_absolute_values():
    """C.11.2.1.3.1: 1 / (1 + exp(-4 (x - c) / w))."""
    values = np.array([100.0, 112.5, 87.5, 1e9, -1e9])
    expected = [0.5, 1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0)), 1.0, 0.0]
    np.testing.assert_allclose(window(values, 100.0, 50.0, "SIGMOID"), expected, atol=1e-6)


def test_width_one_window_is_a_step_at_the_centre():
    values = np.array([99.0, 99.5, 99.6, 100.0])
    np.testing.assert_array_equal(window(values, 100.0, 1.0, "LINEAR"), [0, 0, 1, 1])
    np.testing.assert_array_equal(window(values, 100.0, 0.5, "LINEAR"), [0, 0, 1, 1])  # widths < 1 too


def test_window_of_several_is_chosen_by_index_and_past_the_end_falls_back_with_a_note():
    ds = _ds(WindowCenter=[100.0, 1000.0], WindowWidth=[51.0, 201.0])
    values = np.array([99.5, 999.5])
    notes: list[str] = []
    np.testing.assert_allclose(voi(values, ds, 0, notes), [0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(voi(values, ds, 1, notes), [0.0, 0.5], atol=1e-6)
    assert notes == []
    np.testing.assert_allclose(voi(values, ds, 2, notes), [0.0, 0.5], atol=1e-6)
    assert notes == ["voi_window_index=2 not present; used window 1"]
    uneven = _ds(WindowCenter=[100.0, 1000.0], WindowWidth=51.0)  # one width: the first window
    np.testing.assert_allclose(voi(values, uneven, 1, []), [0.5, 1.0], atol=1e-6)


def test_window_function_is_read_from_the_file():
    ds = _ds(WindowCenter=100.0, WindowWidth=50.0, VOILUTFunction="SIGMOID")
    np.testing.assert_allclose(voi(np.array([112.5]), ds, 0, []), [1 / (1 + np.exp(-1.0))], atol=1e-6)


@pytest.mark.parametrize("width", [0.0, -5.0, float("nan"), float("inf")])
def test_unusable_window_width_is_ignored_with_a_note(width):
    notes: list[str] = []
    assert voi(np.array([1.0]), _ds(WindowCenter=1.0, WindowWidth=width), 0, notes) is None
    assert notes == ["window width <= 0 ignored"]


def test_no_voi_at_all_is_none_without_a_note():
    notes: list[str] = []
    assert voi(np.array([1.0]), Dataset(), 0, notes) is None
    assert voi(np.array([1.0]), _ds(WindowCenter=1.0), 0, notes) is None
    assert notes == []


@pytest.mark.parametrize("value,limit", [(0, 10), (10, 0)])
def test_padding_range_masks_both_ends_inclusive(value, limit):
    arr = np.array([[0, 5, 10, 11], [200, 3, 9, 12]], dtype=np.int32)
    mask = padding_mask(arr, _ds(PixelPaddingValue=value, PixelPaddingRangeLimit=limit))
    np.testing.assert_array_equal(mask, [[True, True, True, False], [False, True, True, False]])


def test_padding_value_alone_masks_only_that_value():
    arr = np.array([[0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(padding_mask(arr, _ds(PixelPaddingValue=2)), [[0, 0, 1], [0, 1, 0]])
    assert padding_mask(arr, _ds(PixelPaddingValue=9)) is None  # absent from the image: no mask
    assert padding_mask(arr, Dataset()) is None


def test_rgb_becomes_bt601_luma_over_its_full_scale():
    arr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    ds = _ds(PhotometricInterpretation="RGB", SamplesPerPixel=3, BitsStored=8)
    assert is_colour(ds)
    np.testing.assert_allclose(to_grey(arr, ds, Path("x.dcm")), [[0.299, 0.587, 0.114, 1.0]], atol=1e-6)
    ds12 = _ds(PhotometricInterpretation="RGB", SamplesPerPixel=3, BitsStored=12)
    out = to_grey(np.full((1, 1, 3), 4095, dtype=np.uint16), ds12, Path("x.dcm"))
    np.testing.assert_allclose(out, [[1.0]], atol=1e-6)
    out = to_grey(np.full((1, 1, 3), 255, dtype=np.uint16), ds12, Path("x.dcm"))
    np.testing.assert_allclose(out, [[255 / 4095]], atol=1e-6)


def test_greyscale_is_returned_unchanged_and_bad_shapes_are_refused():
    grey = np.array([[0, 4095]], dtype=np.uint16)
    ds = _ds(PhotometricInterpretation="MONOCHROME2", SamplesPerPixel=1, BitsStored=12)
    assert not is_colour(ds) and to_grey(grey, ds, Path("x.dcm")) is grey
    with pytest.raises(UnreadableImage, match="unexpected pixel array shape") as info:
        to_grey(np.zeros((2, 2, 2, 2)), ds, Path("x.dcm"))
    assert info.value.path == "x.dcm"
    rgb = _ds(PhotometricInterpretation="RGB", SamplesPerPixel=3)
    with pytest.raises(UnreadableImage, match=r"shape \(2, 2\) for RGB"):
        to_grey(np.zeros((2, 2)), rgb, Path("x.dcm"))
    with pytest.raises(UnreadableImage, match=r"shape \(2, 2, 4\)"):
        to_grey(np.zeros((2, 2, 4)), ds, Path("x.dcm"))


def test_palette_colour_uses_the_palette_and_its_integer_scale():
    ds = _ds(
        PhotometricInterpretation="PALETTE COLOR",
        SamplesPerPixel=1,
        BitsStored=8,
        BitsAllocated=8,
        PixelRepresentation=0,
        RedPaletteColorLookupTableDescriptor=[2, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[2, 0, 16],
        BluePaletteColorLookupTableDescriptor=[2, 0, 16],
        RedPaletteColorLookupTableData=np.array([0, 65535], dtype="<u2").tobytes(),
        GreenPaletteColorLookupTableData=np.array([0, 0], dtype="<u2").tobytes(),
        BluePaletteColorLookupTableData=np.array([0, 65535], dtype="<u2").tobytes(),
    )
    assert is_colour(ds)
    out = to_grey(np.array([[0, 1]], dtype=np.uint8), ds, Path("x.dcm"))
    np.testing.assert_allclose(out, [[0.0, 0.299 + 0.114]], atol=1e-4)


@pytest.mark.parametrize(
    "elements,colour",
    [
        ({"SamplesPerPixel": 3}, True),
        ({"SamplesPerPixel": "x"}, False),
        ({"SamplesPerPixel": None}, False),
        ({"PhotometricInterpretation": "palette color"}, True),
        ({"PhotometricInterpretation": "MONOCHROME1"}, False),
    ],
)
@pytest.mark.filterwarnings("ignore:A value of type:UserWarning", "ignore:Invalid value for VR:UserWarning")
def test_colour_is_three_samples_or_a_palette(elements, colour):
    assert is_colour(_ds(**elements)) is colour


def _signed_lut(first: int, data: list[int]) -> Dataset:
    item = _ds(LUTDescriptor=[len(data) % 65536, first, 16], LUTData=data, ModalityLUTType="US")
    return _ds(ModalityLUTSequence=[item], BitsStored=16, PixelRepresentation=1)


def test_modality_lut_starting_below_zero_covers_signed_values():
    stored = np.array([-3, -2, -1, 0, 1, 2])
    np.testing.assert_array_equal(
        modality_lut(stored, _signed_lut(-2, [10, 20, 30, 40])), [10, 10, 20, 30, 40, 40]
    )


def test_signed_modality_lut_past_the_int16_range_is_not_trusted():
    """A LUT from -100 may reach 32767 (first + n == 32768); one entry more cannot be a signed range
    and the stored values are used as they are."""
    stored = np.array([-100, 32767])
    np.testing.assert_array_equal(modality_lut(stored, _signed_lut(-100, list(range(32868)))), [0, 32867])
    np.testing.assert_array_equal(modality_lut(stored, _signed_lut(-100, list(range(32869)))), [-100, 32767])


def test_modality_lut_with_65536_entries_is_described_by_zero():
    ds = _signed_lut(0, list(range(65535, -1, -1)))  # an inverting table
    ds.PixelRepresentation = 0
    assert ds.ModalityLUTSequence[0].LUTDescriptor[0] == 0  # PS3.3 C.11.1.1: 0 means 2**16 entries
    np.testing.assert_array_equal(modality_lut(np.array([0, 40000, 65535]), ds), [65535, 25535, 0])


def test_windows_return_float32_and_never_overflow():
    values = np.array([1e9, -1e9, 100.0, 99.0])
    with np.errstate(all="raise"):
        for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            out = window(values, 100.0, 50.0, function)
            assert out.dtype == np.float32, function
            assert out[0] == pytest.approx(1.0) and out[1] == pytest.approx(0.0, abs=1e-30), function
        assert window(values, 100.0, 1.0, "LINEAR").dtype == np.float32  # the step


def test_width_two_is_still_linear_and_exact_widths_below_one_too():
    """LINEAR width 2: from c - 1 to c, slope 1 (span 1: not yet the step of width 1)."""
    np.testing.assert_allclose(
        window(np.array([98.9, 99.0, 99.5, 100.0]), 100.0, 2.0, "LINEAR"), [0, 0, 0.5, 1]
    )
    np.testing.assert_allclose(
        window(np.array([99.75, 100.0, 100.25]), 100.0, 0.5, "LINEAR_EXACT"), [0, 0.5, 1], atol=1e-6
    )


def test_empty_window_elements_mean_no_window_without_a_note():
    ds = _ds(WindowCenter="", WindowWidth="")
    notes: list[str] = []
    assert voi(np.array([1.0]), ds, 0, notes) is None and notes == []
    assert (
        _as_list("") == []
        and _as_list(None) == []
        and _as_list("40") == [40.0]
        and _as_list((1, "2")) == [1.0, 2.0]
    )


def test_unreadable_window_center_is_noted():
    from pydicom.dataelem import DataElement

    ds = _ds(WindowWidth=10.0)
    ds[0x00281050] = DataElement(0x00281050, "LO", "abc")  # Window Center that is not a number
    notes: list[str] = []
    assert voi(np.array([1.0]), ds, 0, notes) is None
    assert notes == ["window center/width unreadable"]


def test_voi_lut_output_is_float32_and_clipped_to_its_declared_depth():
    """An entry above 2**bits - 1 (5000 in a 12-bit LUT) is white, not brighter than white."""
    ds = _ds(VOILUTSequence=[_ds(LUTDescriptor=[2, 0, 12], LUTData=[0, 5000])], BitsStored=12)
    out = voi(np.array([0.0, 1.0]), ds, 0, [])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 1.0])


def test_more_widths_than_centres_fall_back_to_the_last_pair_and_width_one_is_a_window():
    ds = _ds(WindowCenter=100.0, WindowWidth=[1.0, 51.0])
    notes: list[str] = []
    np.testing.assert_array_equal(voi(np.array([99.0, 100.0]), ds, 1, notes), [0.0, 1.0])  # width 1: a step
    assert notes == ["voi_window_index=1 not present; used window 0"]


def test_empty_modality_lut_sequence_falls_back_to_slope_and_intercept():
    ds = _ds(ModalityLUTSequence=[], RescaleSlope=2.0, RescaleIntercept=-1.0)
    np.testing.assert_array_equal(modality_lut(np.array([0, 5]), ds), [-1.0, 9.0])
    lut = _ds(ModalityLUTSequence=[_lut(0, [7, 9])], BitsStored=16, PixelRepresentation=0)
    assert modality_lut(np.array([0, 1], dtype=np.uint16), lut).dtype == np.float32


def test_padding_value_of_undetermined_type_is_not_guessed():
    """Pixel Padding Value is US or SS by the pixel representation; raw bytes are not read as a number."""
    from pydicom.dataelem import DataElement

    ds = Dataset()
    ds[0x00280120] = DataElement(0x00280120, "OB", b"12")
    assert padding_mask(np.array([12, 13]), ds) is None


@pytest.mark.parametrize("slope,intercept", [(1.0, 1.0), (0.0, 5.0)])
def test_intercept_one_is_added_and_a_zero_slope_counts_as_absent(slope, intercept):
    """A zero Rescale Slope would flatten the image: it is read as the default 1."""
    out = modality_lut(STORED, _ds(RescaleSlope=slope, RescaleIntercept=intercept))
    np.testing.assert_array_equal(out, STORED.astype(np.float64) * (slope or 1.0) + intercept)


def test_rgb_luma_is_float32_clipped_and_uses_8_bits_by_default():
    rgb = np.array([[[255, 255, 255], [300, 300, 300]]], dtype=np.uint16)
    for elements in ({}, {"BitsStored": 0}, {"BitsStored": 8}):
        ds = _ds(PhotometricInterpretation="RGB", SamplesPerPixel=3, **elements)
        out = to_grey(rgb, ds, Path("x.dcm"))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, [[1.0, 1.0]], atol=1e-6)  # 300 is beyond 8 bits: white


def test_colour_shape_errors_name_the_file_and_the_assumed_photometric():
    with pytest.raises(UnreadableImage) as info:
        to_grey(np.zeros((2, 2)), _ds(SamplesPerPixel=3), Path("scan.dcm"))
    assert info.value.path == "scan.dcm" and "shape (2, 2) for MONOCHROME2" in str(info.value)
