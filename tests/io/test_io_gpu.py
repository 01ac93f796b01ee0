"""``preprocess.gpu_decode: auto`` dispatch and fallback, without a GPU: a fake ``nvidia.nvimgcodec``.

The fake records what it was given and returns the frame's true stored values flipped upside down, so the
output proves the GPU result (not a CPU decode) went through modality LUT, VOI and MONOCHROME1 inversion:
every one of those is per pixel, so the result must be the CPU result flipped.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pydicom
import pytest
from pydicom.encaps import get_frame

from xraytriage.config import PreprocessConfig
from xraytriage.io import gpu, load_image


class _Image:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def cpu(self) -> np.ndarray:
        return self.array


def _fake_module(result=None, error: Exception | None = None) -> types.ModuleType:
    mod = types.ModuleType("nvidia.nvimgcodec")
    mod.calls = []
    mod.ColorSpec = types.SimpleNamespace(UNCHANGED="unchanged")
    mod.BackendKind = types.SimpleNamespace(GPU_ONLY="gpu", HYBRID_CPU_GPU="hybrid")
    mod.Backend = lambda kind: ("backend", kind)
    mod.DecodeParams = lambda **kw: dict(kw)

    class Decoder:
        def __init__(self, backends=None) -> None:
            mod.backends = backends

        def decode(self, data, params=None):
            mod.calls.append((data, params))
            if error is not None:
                raise error
            return None if result is None else _Image(result)

    mod.Decoder = Decoder
    return mod


@pytest.fixture
def install(monkeypatch):
    """Put a fake nvImageCodec in sys.modules and pretend one CUDA device is visible."""

    def _install(mod: types.ModuleType | None, devices: int = 1) -> None:
        parent = types.ModuleType("nvidia")
        parent.__path__ = []
        monkeypatch.setitem(sys.modules, "nvidia", parent)
        monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", mod)  # None makes the import fail
        monkeypatch.setattr(gpu, "cuda_device_count", lambda: devices)
        monkeypatch.setattr(gpu, "_CACHE", {})

    return _install


def _stored_and_frame(path: str) -> tuple[np.ndarray, bytes]:
    ds = pydicom.dcmread(path)
    return ds.pixel_array, get_frame(ds.PixelData, 0, number_of_frames=1)


AUTO = {"gpu_decode": "auto", "jpeg2000_min_fraction": 1.0}


def test_gpu_output_flows_through_modality_voi_and_inversion(install, pydicom_test_file):
    path = pydicom_test_file("RG3_J2KR.dcm")
    stored, frame = _stored_and_frame(path)
    fake = _fake_module(result=np.ascontiguousarray(stored[::-1])[:, :, None])  # HxWx1, like nvImageCodec
    install(fake)
    cpu, cpu_meta = load_image(path, PreprocessConfig(), resize=False)
    image, meta = load_image(path, PreprocessConfig(**AUTO), resize=False)
    assert meta.decode_path == "nvimgcodec" and cpu_meta.decode_path == "pydicom"
    assert len(fake.calls) == 1
    data, params = fake.calls[0]
    assert bytes(data) == frame  # the first frame's codestream, as stored in the file
    assert params == {"allow_any_depth": True, "color_spec": "unchanged"}  # 10-bit values unscaled
    assert fake.backends == [("backend", "gpu"), ("backend", "hybrid")]  # no silent CPU codec
    np.testing.assert_allclose(image, cpu[::-1], atol=1e-6)
    assert meta.photometric == "MONOCHROME1" and meta.normalization == cpu_meta.normalization

    # Resized output: the GPU's full-resolution decode is shrunk like any other full decode.
    small, small_meta = load_image(path, PreprocessConfig(image_size=224, **AUTO))
    full_cpu, _ = load_image(path, PreprocessConfig(image_size=224, reduce_jpeg2000=False))
    assert small_meta.decode_path == "nvimgcodec"
    np.testing.assert_allclose(small, full_cpu[::-1], atol=1e-5)


def test_raising_gpu_decoder_falls_back_to_the_cpu_result(install, pydicom_test_file):
    path = pydicom_test_file("RG1_J2KR.dcm")
    fake = _fake_module(error=RuntimeError("nvjpeg2k: CUDA error"))
    install(fake)
    cfg = PreprocessConfig(image_size=224, **AUTO)
    image, meta = load_image(path, cfg)
    expected, expected_meta = load_image(path, PreprocessConfig(image_size=224, jpeg2000_min_fraction=1.0))
    assert len(fake.calls) == 1
    assert meta.decode_path == expected_meta.decode_path == "jpeg2000_reduced/8"
    assert any("GPU decode failed (RuntimeError)" in note for note in meta.notes)
    np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize(
    "bad",
    [
        None,  # decode() returned None
        np.zeros((10, 10, 1), dtype=np.uint16),  # wrong shape
        np.full((1760, 1760), 255, dtype=np.uint8),  # 10-bit data squeezed into 8 bits
        np.full((1760, 1760), 4095, dtype=np.uint16),  # values above BitsStored: rescaled
    ],
)
def test_implausible_gpu_output_falls_back(install, bad, pydicom_test_file):
    path = pydicom_test_file("RG3_J2KR.dcm")
    install(_fake_module(result=bad))
    image, meta = load_image(path, PreprocessConfig(**AUTO), resize=False)
    cpu, _ = load_image(path, PreprocessConfig(), resize=False)
    assert meta.decode_path == "pydicom" and any("GPU decode failed" in n for n in meta.notes)
    np.testing.assert_array_equal(image, cpu)


def test_no_module_or_no_device_uses_cpu_with_a_note(install, pydicom_test_file):
    path = pydicom_test_file("RG3_J2KR.dcm")
    install(None)
    _, meta = load_image(path, PreprocessConfig(image_size=224, **AUTO))
    assert meta.decode_path.startswith("jpeg2000_reduced/")
    assert any("nvImageCodec not available" in n for n in meta.notes)

    fake = _fake_module(result=np.zeros((1760, 1760), dtype=np.uint16))
    install(fake, devices=0)
    _, meta = load_image(path, PreprocessConfig(image_size=224, **AUTO))
    assert meta.decode_path.startswith("jpeg2000_reduced/") and fake.calls == []
    assert any("no CUDA device visible" in n for n in meta.notes)


def test_gpu_decode_off_or_not_jpeg2000_never_touches_the_gpu(install, pydicom_test_file):
    fake = _fake_module(error=AssertionError("must not be called"))
    install(fake)
    _, meta = load_image(pydicom_test_file("RG3_J2KR.dcm"), PreprocessConfig(image_size=224))
    assert meta.decode_path.startswith("jpeg2000_reduced/") and not meta.notes
    _, meta = load_image(pydicom_test_file("RG3_UNCI.dcm"), PreprocessConfig(image_size=224, **AUTO))
    assert meta.decode_path == "native" and not meta.notes
    assert fake.calls == []


def test_signed_jpeg2000_stays_on_the_cpu_with_a_note(install, pydicom_test_file):
    fake = _fake_module(error=AssertionError("must not be called"))
    install(fake)
    _, meta = load_image(
        pydicom_test_file("J2K_pixelrep_mismatch.dcm"), PreprocessConfig(image_size=224, **AUTO)
    )
    assert fake.calls == [] and meta.decode_path == "pydicom"  # signed header: pydicom reconciles it
    assert meta.notes == ["gpu_decode: only unsigned greyscale JPEG 2000 is decoded on the GPU; used the CPU"]
