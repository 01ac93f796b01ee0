#!/usr/bin/env python3
"""Preprocessing cache: decode path vs cache path, on the same scans, in one run.

Prints, for each image size,
  1. images/s per worker (one process, one thread) of ``ScanDataset`` samples after augmentation and
     tensor conversion, decoding each scan (``load_image``) vs reading it from the cache, plus the raw
     cache read (lookup + CRC + dequantise) without augmentation;
  2. the time of one data-loading epoch (DataLoader, ``--workers`` processes, no model) from the raw
     DICOMs vs from the cache,
and the ratios. Scans are synthetic DICOMs (uncompressed, RLE and JPEG 2000 lossless mixed, as in the
demo data). Example:

    python scripts/bench_cache.py --scan-size 2048 --n-patients 40 --sizes 224 512 --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from xraytriage.config import AugmentConfig, PreprocessConfig
from xraytriage.data.augment import build_augmentation
from xraytriage.data.cache import build_cache, open_matching_cache
from xraytriage.data.dataset import ScanDataset, collate_skip
from xraytriage.data.manifest import read_manifest
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset


def per_worker(dataset: ScanDataset, n: int, min_seconds: float) -> float:
    """Samples/s in this process, cycling over the scans until ``min_seconds`` have passed."""
    done, start = 0, time.perf_counter()
    while True:
        for i in range(n):
            dataset[i]
        done += n
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def raw_reads(source, paths: list[str], min_seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while True:
        for i, p in enumerate(paths):
            source(i, p)
        done += len(paths)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def epoch_seconds(dataset: ScanDataset, workers: int, batch_size: int) -> float:
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate_skip
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scan-size", type=int, default=1024, help="side of the synthetic DICOMs")
    parser.add_argument("--n-patients", type=int, default=40, help="synthetic patients (1-2 scans each)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--dtype", default="uint16", choices=("uint16", "uint8", "float32"))
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the epoch timing")
    parser.add_argument("--build-workers", type=int, default=None, help="cache build processes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--epoch-images", type=int, default=720, help="epoch length (the scans repeated) for the epoch timing"
    )
    parser.add_argument("--min-seconds", type=float, default=3.0, help="per per-worker measurement")
    parser.add_argument("--data", type=Path, help="reuse/keep the synthetic scans here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "scans"
        manifest = data / "manifest.csv"
        if not manifest.is_file():
            t0 = time.perf_counter()
            generate_dataset(
                data, SyntheticSpec(n_patients=args.n_patients, size=args.scan_size), progress=True
            )
            print(f"generated scans in {time.perf_counter() - t0:.1f} s")
        frame = read_manifest(manifest, leakage="ignore")
        paths = frame["path"].tolist()
        print(
            f"{len(paths)} synthetic DICOMs {args.scan_size}x{args.scan_size}, transfer syntaxes: "
            f"{frame['transfer_syntax'].value_counts().to_dict()}"
        )
        augment = build_augmentation(AugmentConfig(), seed=0)
        rows = []
        for size in args.sizes:
            pp = PreprocessConfig(image_size=size)
            cache_dir = Path(tmp) / "cache"
            t0 = time.perf_counter()
            report = build_cache(
                paths, cache_dir, pp, dtype=args.dtype, workers=args.build_workers, progress=False
            )
            build_s = time.perf_counter() - t0
            source = open_matching_cache(cache_dir, pp)
            decode_set = ScanDataset(frame, ["finding"], pp, 1, augment, None)
            cache_set = ScanDataset(frame, ["finding"], pp, 1, augment, source)
            decode_rate = per_worker(decode_set, len(paths), args.min_seconds)
            cache_rate = per_worker(cache_set, len(paths), args.min_seconds)
            read_rate = raw_reads(source, paths, args.min_seconds)
            nocrc_rate = raw_reads(
                open_matching_cache(cache_dir, pp, verify_reads=False), paths, args.min_seconds
            )
            reps = max(1, -(-args.epoch_images // len(paths)))
            epoch_frame = pd.concat([frame] * reps, ignore_index=True)
            decode_epoch = epoch_seconds(
                ScanDataset(epoch_frame, ["finding"], pp, 1, augment, None), args.workers, args.batch_size
            )
            cache_epoch = epoch_seconds(
                ScanDataset(epoch_frame, ["finding"], pp, 1, augment, source), args.workers, args.batch_size
            )
            rows.append(
                (size, build_s, decode_rate, cache_rate, read_rate, nocrc_rate, decode_epoch, cache_epoch)
            )
            print(
                f"size {size}: build {report.decoded} scans in {build_s:.1f} s; per worker after "
                f"augmentation: decode {decode_rate:.1f} img/s, cache {cache_rate:.1f} img/s "
                f"({cache_rate / decode_rate:.1f}x); raw cache read {read_rate:.0f} img/s "
                f"({nocrc_rate:.0f} without CRC); "
                f"epoch of {len(epoch_frame)} ({args.workers} workers): decode {decode_epoch:.2f} s, "
                f"cache {cache_epoch:.2f} s "
                f"({decode_epoch / cache_epoch:.1f}x)"
            )
        print()
        print(
            "| size | decode img/s/worker | cache img/s/worker | x | cache read img/s (no CRC) | "
            f"epoch decode s | epoch cache s | x | build s ({len(paths)} scans, all cores) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for size, build_s, dr, cr, rr, nr, de, ce in rows:
            print(
                f"| {size} | {dr:.1f} | {cr:.1f} | {cr / dr:.1f}x | {rr:.0f} ({nr:.0f}) | "
                f"{de:.2f} | {ce:.2f} | {de / ce:.1f}x | {build_s:.1f} |"
            )
        print(
            f"goal: >= 3000 img/s per worker at 224 on cache hits; "
            f"numpy {np.__version__}, {os.cpu_count()} cores"
        )


if __name__ == "__main__":
    main()
