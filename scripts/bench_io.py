"""Decoding throughput per CPU core: xraytriage.io.load_image vs a naive baseline vs MONAI.

Prints files/s (one process pinned to one core, every library limited to one thread) for each file and
target size, and the ratios against the baselines measured in the same run. Figures are noisy on a
shared machine; compare ratios, not absolute numbers across runs.

    .venv/bin/python scripts/bench_io.py [--sizes 224 512] [--min-seconds 1.0] [--no-monai] [--no-gpu]
        [--files RG3_UNCI RG1_J2KR] [--jpeg2000-min-fraction 0.85]

The GPU section (nvImageCodec full-resolution JPEG 2000 decode vs the CPU decoder) prints
"skipped: <reason>" when nvImageCodec or a CUDA device is missing.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPJ_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from PIL import Image  # noqa: E402

from xraytriage.config import PreprocessConfig  # noqa: E402
from xraytriage.io import load_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYDICOM_FILES = ["RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_UNCI.dcm", "RG3_J2KR.dcm"]


def _files(shared: Path) -> list[Path]:
    from pydicom.data import get_testdata_file

    out = [Path(p) for p in (get_testdata_file(n) for n in PYDICOM_FILES) if p]
    out += sorted((shared / "data" / "dicom_samples").glob("*.dcm"))
    return out


def _gpu_section(sizes: list[int], min_seconds: float, fraction: float) -> None:
    """Full-resolution RG1_J2KR decode on the GPU (nvImageCodec, with the copy to host) vs the CPU."""
    from pydicom.data import get_testdata_file
    from pydicom.encaps import get_frame

    from xraytriage.io import gpu

    print("\n## GPU JPEG 2000 decode (nvImageCodec) vs CPU, files/s")
    reason = gpu.unavailable_reason()
    path = get_testdata_file("RG1_J2KR.dcm")
    if reason is None and path is None:
        reason = "RG1_J2KR.dcm not available (pip install pydicom-data)"
    if reason is not None:
        print(f"skipped: {reason}")
        return
    ds = pydicom.dcmread(path)
    rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsStored)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    try:
        on_gpu = gpu.decode_frame(frame, rows, cols, bits)
    except Exception as exc:
        print(f"skipped: GPU decode failed ({exc.__class__.__name__}: {str(exc)[:200]})")
        return
    on_cpu = pydicom.pixels.pixel_array(ds)
    same = bool(np.array_equal(on_gpu, on_cpu))
    g = rate(lambda _p: gpu.decode_frame(frame, rows, cols, bits), Path(path), min_seconds)
    c = rate(lambda _p: pydicom.pixels.pixel_array(ds), Path(path), min_seconds)
    print("| what | GPU files/s | CPU files/s | x CPU |")
    print("|---|---|---|---|")
    print(f"| RG1_J2KR full-resolution decode (identical: {same}) | {g:.1f} | {c:.1f} | {g / c:.1f}x |")
    for size in sizes:
        for name in ("RG1_J2KR.dcm", "RG3_J2KR.dcm"):
            p = get_testdata_file(name)
            if p is None:
                continue
            on = PreprocessConfig(image_size=size, gpu_decode="auto", jpeg2000_min_fraction=fraction)
            off = PreprocessConfig(image_size=size, jpeg2000_min_fraction=fraction)
            _, m_on = load_image(p, on)
            _, m_off = load_image(p, off)
            g = rate(lambda q, c=on: load_image(q, c), Path(p), min_seconds)
            c = rate(lambda q, c=off: load_image(q, c), Path(p), min_seconds)
            print(
                f"| load_image {name[:-4]} {size}: {m_on.decode_path} vs {m_off.decode_path} "
                f"| {g:.1f} | {c:.1f} | {g / c:.1f}x |",
                flush=True,
            )


def naive(path: Path, size: int) -> np.ndarray:
    """What most pipelines do: full decode, float, PIL resize."""
    arr = pydicom.dcmread(path).pixel_array.astype(np.float32)
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))


def _monai(size: int) -> Callable[[Path], object] | None:
    try:
        import torch
        from monai.transforms import Compose, LoadImage, Resize
    except ImportError:
        return None
    torch.set_num_threads(1)
    chain = Compose(
        [LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True), Resize((size, size))]
    )
    return lambda path: chain(str(path))


def rate(fn: Callable[[Path], object], path: Path, min_seconds: float, min_reps: int = 3) -> float:
    fn(path)  # warm-up (imports, plugin discovery)
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        fn(path)
        reps += 1
    return reps / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512], help="target side lengths")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="minimum timing window per cell")
    parser.add_argument("--no-monai", action="store_true", help="skip the MONAI column")
    parser.add_argument("--no-gpu", action="store_true", help="skip the nvImageCodec section")
    parser.add_argument("--files", nargs="+", default=None, help="only names containing one of these")
    parser.add_argument(
        "--jpeg2000-min-fraction", type=float, default=None, help="override preprocess.jpeg2000_min_fraction"
    )
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the ../shared folder")
    args = parser.parse_args()
    extra = {}
    if args.jpeg2000_min_fraction is not None:
        extra["jpeg2000_min_fraction"] = args.jpeg2000_min_fraction

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)
    warnings.simplefilter("ignore")
    files = _files(args.shared)
    if args.files:
        files = [p for p in files if any(f in p.name for f in args.files)]
    print(f"# bench_io  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}  1 core")
    print(f"# pydicom {pydicom.__version__}, opencv {cv2.__version__}, numpy {np.__version__}")
    print(f"# preprocess overrides: {extra or 'none'}")
    print("| file | size | decode path | ours files/s | naive files/s | MONAI files/s | x naive | x MONAI |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        cfg = PreprocessConfig(image_size=size, **extra)
        monai = None if args.no_monai else _monai(size)
        for path in files:
            _, meta = load_image(path, cfg)
            ours = rate(lambda p, c=cfg: load_image(p, c), path, args.min_seconds)
            base = rate(lambda p, s=size: naive(p, s), path, args.min_seconds)
            mon = rate(monai, path, args.min_seconds) if monai else float("nan")
            name = path.name if len(path.name) < 28 else path.name[:24] + "..."
            mon_txt = f"{mon:.1f}" if monai else "n/a"
            ratio_m = f"{ours / mon:.1f}x" if monai else "n/a"
            print(
                f"| {name} | {size} | {meta.decode_path} | {ours:.1f} | {base:.1f} | {mon_txt} "
                f"| {ours / base:.1f}x | {ratio_m} |",
                flush=True,
            )
    if not args.no_monai and _monai(args.sizes[0]) is None:
        print("# MONAI not installed: its column is n/a")
    if not args.no_gpu:
        fraction = PreprocessConfig(**extra).jpeg2000_min_fraction
        _gpu_section(args.sizes, args.min_seconds, fraction)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
