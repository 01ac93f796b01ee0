#!/usr/bin/env python3
"""Training throughput: fp32 eager baseline vs the project's default settings, in one run.

For each image size it measures images/s
  1. from one in-memory batch (model + optimiser step only), baseline and project settings, and
  2. end to end from the DataLoader (synthetic DICOMs decoded by workers, augmentation, the real
     training loop of ``xraytriage.training.engine``),
and prints the ratios and the model FLOP utilisation (ResNet-50: ~24.7 GFLOP per training image at
224 px, scaled by the pixel count). ``--cache`` builds the decode-once preprocessing cache first (not
timed), so the end-to-end figure is what training from ``data.cache_dir`` sustains. ``--distinct N``
writes only N distinct synthetic scans and hard-links them under new names and patient IDs up to the
count the timed steps need, so a large epoch costs seconds to set up (every link is its own path, its
own cache record and its own sample). Example on a GPU machine (scripts/gpu_check.py runs this):

    python scripts/bench_train.py --sizes 224 --batch-size 256 --steps 30 --workers 15 --compile --cache
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from xraytriage.config import ModelConfig, load_config
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.inference import autocast_for
from xraytriage.models import build_model
from xraytriage.training.engine import Trainer
from xraytriage.training.losses import masked_bce
from xraytriage.utils.runtime import resolve_amp_dtype, resolve_device

GFLOP_PER_TRAIN_IMAGE_224 = 24.7
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_memory(
    arch: str,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    project: bool,
    compile_model: bool,
) -> float:
    model = build_model(ModelConfig(arch=arch, weights=None), 1).to(device).train()
    memory_format = torch.channels_last if project else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    amp = resolve_amp_dtype("auto", device) if project else None
    net = torch.compile(model) if project and compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    x = torch.rand(batch, 1, size, size, device=device).to(memory_format=memory_format)
    y = (torch.rand(batch, 1, device=device) > 0.5).float()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        with autocast_for(device, amp):
            loss = masked_bce(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def synthetic_manifest(folder: Path, size: int, scans: int, distinct: int) -> Path:
    """A manifest of at least ``scans`` training scans (90 % train): ``distinct`` of them written, the rest
    hard links to those under new names and patient IDs (patient-level splits stay disjoint)."""
    manifest = folder / "manifest.csv"
    if manifest.exists():
        return manifest
    distinct = min(round(scans / 0.9), distinct) if distinct else round(scans / 0.9)
    n_patients = max(8, distinct * 2 // 3)  # 1-2 scans per synthetic patient
    spec = SyntheticSpec(n_patients=n_patients, size=size, split_fractions=(0.9, 0.05, 0.05))
    generate_dataset(folder, spec, progress=False)
    frame = pd.read_csv(manifest)
    copies, k = [frame], 1
    while sum(int((f["split"] == "train").sum()) for f in copies) < scans:
        copy = frame.copy()
        (folder / "copies" / str(k)).mkdir(parents=True)
        copy["path"] = frame["path"].map(lambda p, k=k: f"copies/{k}/{Path(p).name}")
        for source, target in zip(frame["path"], copy["path"]):
            os.link(folder / source, folder / target)
        copy["patient_id"] = copy["patient_id"] + f"-copy{k}"
        copies.append(copy)
        k += 1
    pd.concat(copies, ignore_index=True).to_csv(manifest, index=False)
    return manifest


def build_training_cache(manifest: Path, cache_dir: Path, size: int, workers: int) -> float:
    """Decode every scan of the manifest once into the preprocessing cache; returns seconds taken."""
    from xraytriage.config import PreprocessConfig
    from xraytriage.data.cache import build_cache

    paths = [manifest.parent / p for p in pd.read_csv(manifest)["path"]]
    start = time.perf_counter()
    report = build_cache(paths, cache_dir, PreprocessConfig(image_size=size), workers=workers, progress=False)
    if report.unreadable:
        raise SystemExit(f"cache build could not decode {len(report.unreadable)} scan(s)")
    return time.perf_counter() - start


def end_to_end(
    arch: str,
    size: int,
    batch: int,
    steps: int,
    workers: int,
    device: str,
    compile_model: bool,
    data_dir: Path,
    cache: bool = False,
    distinct: int = 0,
    scan_size: int | None = None,
    augment_backend: str = "albumentations",
) -> float:
    """images/s of the real training loop (an untimed warm-up epoch, then one timed epoch)."""
    source = scan_size or min(size * 2, 1024)
    manifest = synthetic_manifest(data_dir / f"s{size}", source, batch * (steps + 2), distinct)
    overrides = [
        f"data.manifest={manifest}",
        f"data.num_workers={workers}",
        f"model.arch={arch}",
        "model.task=binary",
        f"preprocess.image_size={size}",
        f"train.batch_size={batch}",
        "train.epochs=1",
        f"train.max_steps_per_epoch={steps}",
        f"train.device={device}",
        f"train.compile={compile_model}",
        "train.histogram_every_epochs=0",
        "train.log_every_steps=1000000",
        f"augment.backend={augment_backend}",
    ]
    if cache:
        cache_dir = data_dir / "cache"
        seconds = build_training_cache(manifest, cache_dir, size, max(1, workers))
        print(f"# cache built in {seconds:.1f} s ({cache_dir})", flush=True)
        overrides.append(f"data.cache_dir={cache_dir}")
    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        trainer._data()
        trainer._model()
        trainer._train_one_epoch(0)  # warm-up: workers, cudnn autotuning, compilation
        record = trainer._train_one_epoch(0)
    return record["train_images_per_sec"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on GPU, 8 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 on GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the project settings")
    parser.add_argument("--skip-loader", action="store_true", help="only the in-memory measurement")
    parser.add_argument("--cache", action="store_true", help="end to end from the decode-once cache")
    parser.add_argument(
        "--distinct", type=int, default=512, help="distinct synthetic scans; the rest are hard links (0: all)"
    )
    parser.add_argument(
        "--scan-size", type=int, default=None, help="side of the synthetic scans (default: 2 x size, <= 1024)"
    )
    parser.add_argument(
        "--augment-backend",
        choices=["albumentations", "fast"],
        default="albumentations",
        help="augmentation backend of the end-to-end run (the project default: albumentations)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (256 if gpu else 8)
    steps = args.steps or (30 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    amp = resolve_amp_dtype("auto", device)
    print(
        f"device {name}, torch {torch.__version__}, {args.arch}, batch {batch}, {steps} timed steps; "
        f"project settings: amp={amp}, channels_last, compile={args.compile}, "
        f"end to end from {'the cache' if args.cache else 'DICOMs decoded by'} {args.workers} workers, "
        f"augment.backend={args.augment_backend}",
        flush=True,
    )
    print(f"{'size':>5} {'measurement':<34} {'images/s':>10} {'x baseline':>10} {'TFLOP/s':>8} {'MFU':>6}")
    table = []
    with tempfile.TemporaryDirectory() as data_dir:
        for size in args.sizes:
            flop = GFLOP_PER_TRAIN_IMAGE_224 * 1e9 * (size / 224) ** 2
            base = in_memory(args.arch, size, batch, steps, warmup, device, False, False)
            rows = [
                ("in-memory fp32 eager (baseline)", base),
                (
                    "in-memory project defaults",
                    in_memory(args.arch, size, batch, steps, warmup, device, True, args.compile),
                ),
            ]
            if not args.skip_loader:
                rate = end_to_end(
                    args.arch,
                    size,
                    batch,
                    steps,
                    args.workers,
                    str(device),
                    args.compile,
                    Path(data_dir),
                    cache=args.cache,
                    distinct=args.distinct,
                    scan_size=args.scan_size,
                    augment_backend=args.augment_backend,
                )
                rows.append(("end-to-end from " + ("cache" if args.cache else "DICOMs"), rate))
            for label, rate in rows:
                tflops = rate * flop / 1e12
                mfu = 100 * tflops / peak if peak else None
                mfu_text = f"{mfu:5.1f}%" if mfu is not None else "  n/a"
                print(
                    f"{size:>5} {label:<34} {rate:>10.1f} {rate / base:>9.2f}x {tflops:>8.3f} {mfu_text}",
                    flush=True,
                )
                table.append(
                    {
                        "size": size,
                        "measurement": label,
                        "images_per_s": rate,
                        "x_baseline": rate / base,
                        "tflops": tflops,
                        "mfu": None if mfu is None else round(mfu, 2),
                    }
                )
    if args.json:
        summary = {
            "device": name,
            "torch": torch.__version__,
            "arch": args.arch,
            "batch": batch,
            "steps": steps,
            "amp": str(amp).replace("torch.", ""),
            "compile": args.compile,
            "workers": args.workers,
            "cache": args.cache,
            "peak_tflops": peak,
            "rows": table,
        }
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
