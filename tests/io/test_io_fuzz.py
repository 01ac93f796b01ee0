"""Damaged files (truncations, byte flips) of real DICOM/PNG/JPEG files: only UnreadableImage escapes,
and no file hangs (each decode runs under a time limit)."""

from __future__ import annotations

import concurrent.futures
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xraytriage.config import PreprocessConfig
from xraytriage.io import UnreadableImage, load_image

PER_FILE_SECONDS = 10.0
SEEDS = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm",
    "emri_small_big_endian.dcm",
    "SC_rgb_jpeg.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
]
MUTATIONS_PER_SEED = 30


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.35:  # truncation anywhere, biased towards the header
        return data[: rng.randrange(1, len(data))] if rng.random() < 0.5 else data[: rng.randrange(1, 1024)]
    buf = bytearray(data)
    flips = rng.choice([1, 2, 8, 64])
    header_bias = rng.random() < 0.6
    for _ in range(flips):
        pos = rng.randrange(0, min(len(buf), 2048) if header_bias else len(buf))
        buf[pos] = rng.randrange(256)
    return bytes(buf)


def _raster_seeds(tmp: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for fmt, mode in (("PNG", "I;16"), ("PNG", "L"), ("JPEG", "L"), ("TIFF", "L")):
        arr = rng.integers(0, 255, (64, 48)).astype(np.uint16 if mode == "I;16" else np.uint8)
        path = tmp / f"seed_{mode.replace(';', '')}.{fmt.lower()}"
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def test_fuzzed_files_raise_only_unreadable_image_and_never_hang(tmp_path, pydicom_test_file):
    seeds = [Path(pydicom_test_file(name)) for name in SEEDS] + _raster_seeds(tmp_path)
    rng = random.Random(1234)
    cfg = PreprocessConfig(image_size=64)
    cases = []
    for seed in seeds:
        data = seed.read_bytes()
        for i in range(MUTATIONS_PER_SEED if seed.suffix == ".dcm" else 10):
            target = tmp_path / f"{seed.stem}_{i}{seed.suffix}"
            target.write_bytes(_mutate(data, rng))
            cases.append(target)
    assert len(cases) >= 300
    outcomes = {"ok": 0, "unreadable": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        for case in cases:
            future = pool.submit(load_image, case, cfg)
            try:
                image, _ = future.result(timeout=PER_FILE_SECONDS)
            except UnreadableImage as err:
                assert err.reason and str(case) in str(err)
                outcomes["unreadable"] += 1
            except concurrent.futures.TimeoutError:
                pytest.fail(f"{case.name}: decoding took more than {PER_FILE_SECONDS} s")
            except Exception as exc:  # the contract under test
                pytest.fail(f"{case.name}: {exc.__class__.__name__} escaped load_image: {exc}")
            else:
                assert image.shape == (64, 64) and image.dtype == np.float32
                assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
                outcomes["ok"] += 1
    # Both branches must have been exercised for the test to mean anything.
    assert outcomes["ok"] > 20 and outcomes["unreadable"] > 20, outcomes
