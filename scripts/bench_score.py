"""Benchmark ``xraytriage score`` against a naive loop, and check that its memory stays flat.

Throughput: writes N uncompressed DICOMs (default 2048 x 2500, 12-bit), a random-weight bundle of the
chosen architecture, then times, on the same files in the same process:
  naive   - for each file: load_image -> image_to_tensor -> model(one scan), torch's default threads
  command - xraytriage.scoring.score (DataLoader workers, batching, AMP + channels_last on GPU)
and prints scans/s and the ratio. Memory: ``--memory N`` scores N tiny PNGs in a subprocess and
samples the resident memory of it and its workers as the run progresses.

    python scripts/bench_score.py --count 64 --arch resnet50            # throughput
    python scripts/bench_score.py --memory 10000 --arch resnet18        # flat memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_dicoms(folder: Path, count: int, rows: int, cols: int) -> list[Path]:
    """Uncompressed 16-bit DX files: a smooth synthetic body plus noise, distinct UIDs."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    base = 2000 + 1500 * np.exp(
        -(((xx - cols / 2) / (cols / 3)) ** 2 + ((yy - rows / 2) / (rows / 2.5)) ** 2)
    )
    rng = np.random.default_rng(0)
    study = generate_uid()
    paths = []
    for i in range(count):
        pixels = np.clip(base + rng.normal(0, 60, base.shape), 0, 4095).astype(np.uint16)
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME2"
        ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2750, 3000
        ds.PixelData = pixels.tobytes()
        path = folder / f"scan{i:05d}"  # no extension: found by content
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_bundle(path: Path, arch: str, image_size: int) -> Path:
    from xraytriage.config import ModelConfig, PreprocessConfig
    from xraytriage.models import build_model, save_bundle

    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, weights=None, task="binary")
    save_bundle(
        path,
        build_model(cfg, 1),
        cfg,
        PreprocessConfig(image_size=image_size),
        ["finding"],
        {"finding": 0.5},
        task="binary",
    )
    return path


def naive(paths: list[Path], bundle_path: Path, device: torch.device, threads: int | None) -> float:
    """The loop a first script would use: one scan at a time, read -> preprocess -> model."""
    from xraytriage.data.tensors import image_to_tensor
    from xraytriage.io import load_image
    from xraytriage.models import load_bundle

    default_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    b = load_bundle(bundle_path)
    model = b.model.to(device).eval()
    with torch.inference_mode():
        for p in paths:
            image, _ = load_image(p, b.preprocess)
            x = image_to_tensor(image, b.preprocess, b.model_config.in_channels)[None].to(device)
            b.probabilities(model(x)).cpu()
    rate = len(paths) / (time.perf_counter() - t0)
    torch.set_num_threads(default_threads)
    return rate


def fresh(path: Path) -> Path:
    """The command resumes existing outputs: start from none so every scan is timed."""
    path.unlink(missing_ok=True)
    path.with_name(f"{path.stem}.errors.csv").unlink(missing_ok=True)
    return path


def command(folder: Path, bundle: Path, out: Path, args: argparse.Namespace) -> float:
    from xraytriage.scoring import ScoreOptions, score

    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    summary = score(
        ScoreOptions(
            model=bundle,
            input=folder,
            out=out,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            compile=args.compile,
            threads=args.threads,
            progress=False,
        )
    )
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(default_threads)
    assert summary.failed == 0, summary.text()
    return summary.scored / elapsed


def memory_check(n: int, args: argparse.Namespace, work: Path) -> dict:
    import psutil
    from PIL import Image

    folder = work / "tiny"
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"d{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(sub / f"{i:06d}.png")
    bundle = make_bundle(work / "m.pt", args.arch, args.image_size)
    out = work / "mem.csv"
    cmd = [
        sys.executable,
        "-m",
        "xraytriage.commands.score",
        str(folder),
        "--model",
        str(bundle),
        "--out",
        str(out),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    samples = []  # (rows written, MiB in main process, MiB in main + workers)
    while proc.poll() is None:
        try:
            main = ps.memory_info().rss
            total = main + sum(c.memory_info().rss for c in ps.children(recursive=True))
        except psutil.Error:
            break
        with open(out, "rb") if out.exists() else open(os.devnull, "rb") as fh:
            done = max(0, fh.read().count(b"\n") - 1)
        samples.append((done, main / 2**20, total / 2**20))
        time.sleep(0.25)
    marks = {}
    for frac in (0.1, 0.25, 0.5, 0.75, 0.99):
        hit = next((s for s in samples if s[0] >= frac * n), None)
        if hit:
            marks[f"{int(frac * 100)}%"] = {
                "rows": hit[0],
                "main_MiB": round(hit[1]),
                "all_MiB": round(hit[2]),
            }
    return {
        "files": n,
        "returncode": proc.returncode,
        "peak_main_MiB": round(max(s[1] for s in samples)),
        "peak_all_MiB": round(max(s[2] for s in samples)),
        "at": marks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--rows", type=int, default=2500)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, help="CPU inference threads for the command (default: its own)")
    ap.add_argument("--skip-naive", action="store_true", help="time only the command")
    ap.add_argument("--naive-count", type=int, default=0, help="files for the naive loop (default: all)")
    ap.add_argument("--memory", type=int, default=0, metavar="N", help="flat-memory check on N tiny PNGs")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_score_"))
    if args.memory:
        print(json.dumps(memory_check(args.memory, args, work), indent=1))
        return
    from xraytriage.utils.runtime import resolve_device

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    paths = make_dicoms(work / "dicom", args.count, args.rows, args.cols)
    bundle = make_bundle(work / "model.pt", args.arch, args.image_size)
    print(
        f"wrote {len(paths)} DICOMs {args.cols}x{args.rows} in {time.perf_counter() - t0:.0f} s; "
        f"device={device}, arch={args.arch}, image_size={args.image_size}, cores={os.cpu_count()}"
    )
    subset = paths[: args.naive_count] if args.naive_count else paths
    naive(subset[:2], bundle, device, None)  # warm caches and kernels for both contenders
    results = {
        "naive (default threads)": naive(subset, bundle, device, None),
        "naive (1 thread)": naive(subset, bundle, device, 1) if device.type == "cpu" else None,
        "command": command(work / "dicom", bundle, fresh(work / "scores.csv"), args),
    }
    base = results["naive (default threads)"]
    for name, rate in results.items():
        if rate is not None:
            print(f"{name:26s} {rate:8.1f} scans/s   x{rate / base:.2f} vs naive")


if __name__ == "__main__":
    main()
