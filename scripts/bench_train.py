#!/usr/bin/env python3
"""Training throughput: fp32 eager baseline vs the project's default settings, in one run.

For each image size it measures images/s
  1. from one in-memory batch (model + optimiser step only), baseline and project settings, and
  2. end to end from the DataLoader (synthetic DICOMs decoded by workers, augmentation, the real
     training loop of ``xraytriage.training.engine``),
and prints the ratios and the model FLOP utilisation (ResNet-50: ~24.7 GFLOP per training image at
224 px, scaled by the pixel count). Example on a GPU machine:

    python scripts/bench_train.py --sizes 224 512 --batch-size 256 --steps 50 --workers 16 --compile
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from xraytriage.config import ModelConfig, load_config
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.models import build_model
from xraytriage.training.engine import Trainer
from xraytriage.training.losses import masked_bce
from xraytriage.training.predict import autocast_for
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


def end_to_end(
    arch: str,
    size: int,
    batch: int,
    steps: int,
    workers: int,
    device: str,
    compile_model: bool,
    data_dir: Path,
) -> float:
    n_patients = max(8, batch * (steps + 2) // 3 * 2)
    manifest = data_dir / f"s{size}" / "manifest.csv"
    if not manifest.exists():
        generate_dataset(
            manifest.parent,
            SyntheticSpec(n_patients=n_patients, size=min(size * 2, 1024), split_fractions=(0.9, 0.05, 0.05)),
            progress=False,
        )
    cfg = load_config(
        None,
        [
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
        ],
    )
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        trainer._data()
        trainer._model()
        trainer._train_one_epoch(0)  # warm-up: workers, cudnn autotuning, compilation
        record = trainer._train_one_epoch(0)
    return record["train_images_per_sec"]


def main() -> None:
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
    args = parser.parse_args()

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
        f"project settings: amp={amp}, channels_last, compile={args.compile}"
    )
    print(f"{'size':>5} {'measurement':<34} {'images/s':>10} {'x baseline':>10} {'TFLOP/s':>8} {'MFU':>6}")
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
                rows.append(
                    (
                        "end-to-end from loader",
                        end_to_end(
                            args.arch,
                            size,
                            batch,
                            steps,
                            args.workers,
                            str(device),
                            args.compile,
                            Path(data_dir),
                        ),
                    )
                )
            for label, rate in rows:
                tflops = rate * flop / 1e12
                mfu = f"{100 * tflops / peak:5.1f}%" if peak else "  n/a"
                print(f"{size:>5} {label:<34} {rate:>10.1f} {rate / base:>9.2f}x {tflops:>8.3f} {mfu}")


if __name__ == "__main__":
    main()
