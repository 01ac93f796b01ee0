"""Decoding throughput per CPU core: xraytriage.io.load_image vs a naive baseline vs MONAI.

Prints files/s (one process pinned to one core, every library limited to one thread) for each file and
target size, and the ratios against the baselines measured in the same run. Figures are noisy on a
shared machine; compare ratios, not absolute numbers across runs.

    .venv/bin/python scripts/bench_io.py [--sizes 224 512] [--min-seconds 1.0] [--no-monai] [--no-gpu]
        [--files RG3_UNCI RG1_J2KR] [--jpeg2000-min-fraction 0.85]

The GPU section (nvImageCodec full-resolution JPEG 2000 decode of RG1_J2KR, RG3_J2KR and the lossy
RG1_J2KI vs the CPU decoder, per file, with the largest pixel difference) prints "skipped: <reason>" when
nvImageCodec or a CUDA device is missing. ``--json PATH`` also writes the figures as JSON.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPJ_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
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


GPU_FILES = ("RG1_J2KR.dcm", "RG3_J2KR.dcm", "RG1_J2KI.dcm")


def _gpu_section(sizes: list[int], min_seconds: float, fraction: float) -> dict:
    """Full-resolution JPEG 2000 decode on the GPU (nvImageCodec, with the copy to host) vs the CPU decoder
    (pydicom + pylibjpeg-openjpeg), per file; then ``load_image`` with and without ``gpu_decode``."""
    from pydicom.data import get_testdata_file
    from pydicom.encaps import get_frame

    from xraytriage.io import gpu

    print("\n## GPU JPEG 2000 decode (nvImageCodec) vs CPU, files/s")
    reason = gpu.unavailable_reason()
    paths = {name: get_testdata_file(name) for name in GPU_FILES}
    if reason is None and not all(paths.values()):
        reason = "RG1/RG3 JPEG 2000 files not available (pip install pydicom-data)"
    if reason is not None:
        print(f"skipped: {reason}")
        return {"skipped": reason}
    out: dict = {"skipped": None, "full_resolution": [], "load_image": []}
    print("| what | GPU files/s | CPU files/s | x CPU |")
    print("|---|---|---|---|")
    for name, path in paths.items():
        ds = pydicom.dcmread(path)
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsStored)
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        try:
            on_gpu = gpu.decode_frame(frame, rows, cols, bits)
        except Exception as exc:
            print(f"| {name[:-4]}: GPU decode failed ({exc.__class__.__name__}: {str(exc)[:160]}) | | | |")
            out["full_resolution"].append(
                {"what": name[:-4], "error": f"{exc.__class__.__name__}: {exc}"[:300]}
            )
            continue
        on_cpu = pydicom.pixels.pixel_array(ds)
        diff = int(np.abs(on_gpu.astype(np.int64) - on_cpu.astype(np.int64)).max())
        g = rate(
            lambda _p, f=frame, r=rows, c=cols, b=bits: gpu.decode_frame(f, r, c, b), Path(path), min_seconds
        )
        c = rate(lambda _p, d=ds: pydicom.pixels.pixel_array(d), Path(path), min_seconds)
        what = f"{name[:-4]} {cols}x{rows} full-resolution decode"
        print(f"| {what} (max |GPU-CPU| {diff}) | {g:.1f} | {c:.1f} | {g / c:.1f}x |", flush=True)
        row = {"what": what, "gpu": g, "cpu": c, "x_cpu": g / c, "identical": diff == 0, "max_abs_diff": diff}
        out["full_resolution"].append(row)
    for size in sizes:
        for name in GPU_FILES[:2]:
            p = paths[name]
            on = PreprocessConfig(image_size=size, gpu_decode="auto", jpeg2000_min_fraction=fraction)
            off = PreprocessConfig(image_size=size, jpeg2000_min_fraction=fraction)
            _, m_on = load_image(p, on)
            _, m_off = load_image(p, off)
            g = rate(lambda q, c=on: load_image(q, c), Path(p), min_seconds)
            c = rate(lambda q, c=off: load_image(q, c), Path(p), min_seconds)
            what = f"load_image {name[:-4]} {size}: {m_on.decode_path} vs {m_off.decode_path}"
            print(f"| {what} | {g:.1f} | {c:.1f} | {g / c:.1f}x |", flush=True)
            out["load_image"].append({"what": what, "gpu": g, "cpu": c, "x_cpu": g / c})
    return out


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


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    figures: dict = {"cpu": []}
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
            figures["cpu"].append(
                {
                    "file": path.name,
                    "size": size,
                    "decode_path": meta.decode_path,
                    "ours": ours,
                    "naive": base,
                }
            )
    if not args.no_monai and _monai(args.sizes[0]) is None:
        print("# MONAI not installed: its column is n/a")
    if not args.no_gpu:
        fraction = PreprocessConfig(**extra).jpeg2000_min_fraction
        figures["gpu"] = _gpu_section(args.sizes, args.min_seconds, fraction)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
