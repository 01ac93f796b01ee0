#!/usr/bin/env python3
"""Preprocessing cache and augmentation backends: decode path vs cache path, on the same scans, in one run.

Prints, for each image size,
  1. images/s per worker (one process, one thread) of ``ManifestScans`` samples after augmentation and
     tensor conversion, for each augmentation backend (fast, albumentations), decoding each scan
     (``load_image``) vs reading it from the cache;
  2. the raw cache read (lookup + CRC + dequantise, no augmentation) with the CRC checked on every
     read, once per record and process (the default; steady state), and never;
  3. the cache-hit sample split into stages (microseconds per sample: when the stage runs, and
     amortised over its firing probability), fast backend;
  4. the time of one data-loading epoch (DataLoader, ``--workers`` processes, no model) from the raw
     DICOMs vs from the cache, for the ``--epoch-backends``,
and the ratios. Scans are synthetic DICOMs (uncompressed, RLE and JPEG 2000 lossless mixed, as in the
demo data). Every per-worker figure is the best of ``--repeats`` runs of ``--min-seconds`` each.
Example:

    python scripts/bench_cache.py --scan-size 2048 --n-patients 40 --sizes 224 512 --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from xraytriage.config import AugmentConfig, PreprocessConfig
from xraytriage.data import augment as aug
from xraytriage.data.cache import CacheSource, build_cache, dequantise, open_matching_cache
from xraytriage.data.dataset import ManifestScans, _mix, collate_scans
from xraytriage.data.manifest import read_manifest
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.data.tensors import image_to_tensor
from xraytriage.data.workers import WorkerInit

BACKENDS = ("fast", "albumentations")


def rate(step: Callable[[int], object], n: int, min_seconds: float, repeats: int) -> float:
    """Best calls/s of ``step(k)`` over ``repeats`` runs of >= min_seconds, k = 0, 1, 2, ... in each run
    (checked every ``n`` calls)."""
    best = 0.0
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while True:
            for k in range(done, done + n):
                step(k)
            done += n
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, done / elapsed)
    return best


def per_worker(dataset: ManifestScans, min_seconds: float, repeats: int) -> float:
    """Samples/s of ``ManifestScans.__getitem__`` in this process, one thread.

    Sample k is scan k % n in epoch 1 + k // n: every pass over the scans draws new augmentations (the
    same sequence for every backend and run), so the op firing rates approach their probabilities
    instead of repeating the n draws of one epoch.
    """
    n = len(dataset)
    return rate(lambda k: dataset[((1 + k // n) << 32) | (k % n)], n, min_seconds, repeats)


def stage_table(
    dataset: ManifestScans, source: CacheSource, pp: PreprocessConfig, cfg: AugmentConfig, rounds: int
) -> list[tuple[str, float, float]]:
    """(stage, us when it runs, us amortised per sample) for a cache-hit sample, fast backend.

    Every stage is timed once per round, round-robin, and keeps its best round, so all stages (and the
    whole ``__getitem__``, timed the same way) see the same mix of quiet and busy moments.
    """
    paths = dataset.paths
    n = len(paths)
    entries = [source.index.entries[os.path.abspath(p)] for p in paths]
    records = [source._record(e[2], e[3]) for e in entries]
    images = [dequantise(r, source.index.dtype) for r in records]
    # Augmentation ops and image_to_tensor run on one image, hot in the CPU cache as in __getitem__
    # (where each stage reads what the previous one just wrote); cycling over all images would time
    # memory traffic instead (16 images at 512 px are 16 MB).
    # Brightness/contrast, the clip and gamma write into a scratch array, as they work in place after
    # the warp; gamma reads a warped, floored image (warp borders are zeros: see augment.POW_FLOOR).
    hot, scratch = images[0], images[0].copy()
    clipped = warped_hot = aug._clip01(
        aug.warp(hot, aug.affine_matrix(hot.shape, 6.0, 0.95, 0.95, 8, -8)), aug.POW_FLOOR
    )
    transform = aug.FastAugmentation(cfg, 0)
    epochs = range(1, 1 + max(400 // n, 1))
    draws = []  # exactly the augmentations of the "whole" stage: epochs x scans, as ManifestScans seeds them
    for epoch in epochs:
        for i in range(n):
            transform.set_random_seed(_mix(dataset.augment_seed, epoch, i))
            draws.append(transform.sample_params(hot.shape))
    off = CacheSource(source.store, source.index, pp, verify_reads="off")

    def draw(i: int) -> None:
        transform.set_random_seed(_mix(0, 1, i))
        transform.sample_params(hot.shape)

    def warped(p: aug.FastParams) -> None:
        aug.warp(hot, aug.affine_matrix(hot.shape, *p[:6]))

    # name -> (function of a sample index or a FastParams, the inputs, fraction of samples it runs on)
    per_sample = [
        ("lookup+dequantise", lambda i: off.lookup(paths[i])),
        ("dequantise", lambda i: dequantise(records[i], source.index.dtype)),
        ("crc", lambda i: zlib.crc32(records[i])),
        ("draw", draw),
        ("image_to_tensor", lambda i: image_to_tensor(hot, pp)),
    ]
    per_op = [
        ("  affine (matrix + warpAffine)", warped, [d for d in draws if d.angle is not None]),
        (
            "  brightness/contrast + clip",
            lambda p: aug._clip01(
                cv2.addWeighted(hot, p.alpha, hot, 0.0, p.beta, dst=scratch), aug.POW_FLOOR
            ),
            [d for d in draws if d.alpha is not None],
        ),
        (
            "  clip alone (warped, no b/c)",
            lambda p: aug._clip01(clipped, aug.POW_FLOOR),  # idempotent: the same work every call
            [d for d in draws if d.alpha is None and d.angle is not None],
        ),
        (
            "  gamma (cv2.pow)",
            lambda p: cv2.pow(warped_hot, p.gamma, dst=scratch),
            [d for d in draws if d.gamma is not None],
        ),
        (
            "  CLAHE (uint8 round trip)",
            lambda p: aug.clahe(hot, p.clahe_clip),
            [d for d in draws if d.clahe_clip is not None],
        ),
    ]
    best: dict[str, float] = {}
    inner = max(200 // n, 1)
    for _ in range(rounds):
        start = time.perf_counter()
        for epoch in epochs:
            for i in range(n):
                dataset[(epoch << 32) | i]
        us = (time.perf_counter() - start) / len(draws) * 1e6
        best["whole"] = min(best.get("whole", us), us)
        for name, fn in per_sample:
            start = time.perf_counter()
            for _ in range(inner):
                for i in range(n):
                    fn(i)  # results dropped at once: keeping them would time page faults
            us = (time.perf_counter() - start) / (inner * n) * 1e6
            best[name] = min(best.get(name, us), us)
        for name, fn, inputs in per_op:
            if not inputs:
                best[name] = 0.0
                continue
            start = time.perf_counter()
            for p in inputs:
                fn(p)
            us = (time.perf_counter() - start) / len(inputs) * 1e6
            best[name] = min(best.get(name, us), us)
    lookup = best["lookup+dequantise"] - best["dequantise"]
    rows = [
        ("cache lookup (index, stat, record view)", lookup, lookup),
        ("CRC32 of the record (first read; every read with always)", best["crc"], 0.0),
        ("dequantise", best["dequantise"], best["dequantise"]),
        ("augmentation: reseed + draw parameters", best["draw"], best["draw"]),
    ]
    for name, _, inputs in per_op:
        rows.append((name, best[name], best[name] * len(inputs) / len(draws)))
    rows.append(("image_to_tensor", best["image_to_tensor"], best["image_to_tensor"]))
    rows.append(("whole __getitem__, same method", best["whole"], best["whole"]))
    return rows


def raw_reads(source: CacheSource, paths: list[str], min_seconds: float, repeats: int) -> float:
    n = len(paths)
    return rate(lambda k: source(k % n, paths[k % n]), n, min_seconds, repeats)


def epoch_seconds(dataset: ManifestScans, workers: int, batch_size: int) -> float:
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_scans,
        worker_init_fn=WorkerInit(),
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
    parser.add_argument(
        "--epoch-backends",
        nargs="*",
        default=["fast"],
        choices=BACKENDS,
        help="backends for the epoch timing (none: skip it)",
    )
    parser.add_argument("--min-seconds", type=float, default=2.0, help="per per-worker measurement")
    parser.add_argument("--repeats", type=int, default=3, help="per-worker figures are the best of these")
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
            f"{frame['transfer_syntax'].value_counts().to_dict()}; cache dtype {args.dtype}"
        )
        cfgs = {b: AugmentConfig(backend=b) for b in BACKENDS}
        measure = (args.min_seconds, args.repeats)
        summary = []
        for size in args.sizes:
            pp = PreprocessConfig(image_size=size)
            cache_dir = Path(tmp) / "cache"
            t0 = time.perf_counter()
            report = build_cache(
                paths, cache_dir, pp, dtype=args.dtype, workers=args.build_workers, progress=False
            )
            build_s = time.perf_counter() - t0
            source = open_matching_cache(cache_dir, pp, dtype=args.dtype)
            assert source is not None and len(source) == len(paths)
            print(f"\n## size {size}: cache build of {report.decoded} scans {build_s:.1f} s")

            per = {}
            for backend in BACKENDS:
                transform = aug.build_augmentation(cfgs[backend], seed=0)
                for path_kind, src in (("decode", None), ("cache", source)):
                    ds = ManifestScans(frame, ["finding"], pp, 1, transform, src, augment_seed=0)
                    per[backend, path_kind] = per_worker(ds, *measure)
            plain = ManifestScans(frame, ["finding"], pp, 1, None, source)
            per["none", "cache"] = per_worker(plain, *measure)
            reads = {
                mode: raw_reads(CacheSource(source.store, source.index, pp, mode), paths, *measure)
                for mode in ("always", "once", "off")
            }
            print(f"per worker, img/s after augmentation + image_to_tensor (best of {args.repeats}):")
            print("| backend | decode path | cache path | cache / decode |")
            print("|---|---|---|---|")
            for backend in BACKENDS:
                d, c = per[backend, "decode"], per[backend, "cache"]
                print(f"| {backend} | {d:.1f} | {c:.1f} | {c / d:.1f}x |")
            fast, ref = per["fast", "cache"], per["albumentations", "cache"]
            print(
                f"fast / albumentations on cache hits: {fast / ref:.2f}x; no augmentation (read + "
                f"image_to_tensor): {per['none', 'cache']:.0f} img/s"
            )
            print(
                f"raw cache read img/s (lookup + CRC + dequantise): CRC every read {reads['always']:.0f}, "
                f"once per record (default, steady state) {reads['once']:.0f}, never {reads['off']:.0f}"
            )
            rows = stage_table(
                ManifestScans(frame, ["finding"], pp, 1, aug.build_augmentation(cfgs["fast"], 0), source),
                source,
                pp,
                cfgs["fast"],
                max(3 * args.repeats, 9),
            )
            print("cache-hit sample, fast backend, by stage (best of interleaved rounds):")
            print("| stage | us when it runs | us per sample (amortised) |")
            print("|---|---|---|")
            for name, when, amortised in rows:
                print(f"| {name} | {when:.1f} | {amortised:.1f} |")
            stages = sum(r[2] for r in rows[:-1])
            whole = rows[-1][2]
            print(
                f"| sum of the stages above | | {stages:.1f} |\n"
                f"| rest: Python glue, targets, dict (whole - sum) | | {whole - stages:.1f} |"
            )

            epochs = {}
            if args.epoch_backends:
                reps = max(1, -(-args.epoch_images // len(paths)))
                epoch_frame = pd.concat([frame] * reps, ignore_index=True)
                for backend in args.epoch_backends:
                    transform = aug.build_augmentation(cfgs[backend], seed=0)
                    for path_kind, src in (("decode", None), ("cache", source)):
                        ds = ManifestScans(epoch_frame, ["finding"], pp, 1, transform, src)
                        epochs[backend, path_kind] = epoch_seconds(ds, args.workers, args.batch_size)
                    d, c = epochs[backend, "decode"], epochs[backend, "cache"]
                    print(
                        f"epoch of {len(epoch_frame)} images, {args.workers} workers, {backend}: "
                        f"decode {d:.2f} s, cache {c:.2f} s ({d / c:.1f}x)"
                    )
            summary.append((size, per, reads, epochs))

        print("\n## summary (img/s per worker, one thread)")
        print(
            "| size | fast decode | fast cache | albumentations decode | albumentations cache | "
            "fast/albu (cache) | raw read: CRC always / once / never |"
        )
        print("|---|---|---|---|---|---|---|")
        for size, per, reads, _ in summary:
            print(
                f"| {size} | {per['fast', 'decode']:.1f} | {per['fast', 'cache']:.0f} | "
                f"{per['albumentations', 'decode']:.1f} | {per['albumentations', 'cache']:.0f} | "
                f"{per['fast', 'cache'] / per['albumentations', 'cache']:.2f}x | "
                f"{reads['always']:.0f} / {reads['once']:.0f} / {reads['off']:.0f} |"
            )
        verdict = [s for s in summary if s[0] == 224]
        if verdict:
            got = verdict[0][1]["fast", "cache"]
            print(f"goal: >= 3000 img/s per worker at 224 on cache hits after augmentation: {got:.0f} img/s")
        print(f"numpy {np.__version__}, OpenCV {cv2.__version__}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
