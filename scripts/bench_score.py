"""Benchmark ``xraytriage score`` against a naive loop, and check that its memory stays flat.

Throughput: writes N DICOMs of each input kind -- synthetic 2048 x 2500 12-bit uncompressed (Explicit
VR Little Endian), optionally synthetic JPEG 2000 lossless, and real JPEG 2000 lossless radiographs
(pydicom-data RG1/RG3; PACS exports; the project decodes only the wavelet level the network input
needs) -- and a random-weight bundle of the chosen architecture. Then, per kind, on the same files in
the same process:
  decode   - load_image -> image_to_tensor alone, one core (what one decoding worker sustains)
  naive    - the issue's baseline: for each file pydicom dcmread -> pixel_array -> modality/VOI LUT ->
             PIL resize -> model(one scan); and the same loop decoding with load_image
  command  - xraytriage.scoring.score (DataLoader workers, batching; on CPU the default engine is ONNX
             Runtime, and with ``--engines`` the PyTorch engine, BN folded + channels_last, is timed
             too; AMP + channels_last on GPU), end to end including model load, ONNX export and
             worker start
and, once, the model-only ceiling: batched forward passes on pre-made tensors with each engine's
forward pass (inference_mode), i.e. the most any pipeline could reach.
``--split W:T ...`` times the command for several (decoding workers, inference threads) splits;
``--repeat N`` times every contender N times, interleaved, and prints medians with their range. The
exported-graph cache lives in the scratch folder and is emptied before each timed first run.
``--distinct N`` writes N distinct files per kind and hard-links them up to ``--count`` (a 2k x 2.5k
file costs ~0.2 s to make and 10 MB of disk; a link costs nothing, and every link is its own path, row and
decode). ``--marginal M`` also times the command on the first M files, so the steady-state rate
(count - M) / (t_count - t_M) excludes the fixed start-up (model load, worker start, first batches; both
runs are in one process after the model-only warm-up, so CUDA and cuDNN autotuning are warm for both).
The report ends with where the bound is: decoding (one worker's rate x workers) or the model.
Memory: ``--memory N`` scores N tiny PNGs in a subprocess and samples the resident memory of it and
its workers as the run progresses.

    python scripts/bench_score.py --count 240 --naive-count 48 --repeat 3   # throughput, both kinds
    python scripts/bench_score.py --count 64 --split 2:2 1:2 1:1        # worker/thread splits too
    python scripts/bench_score.py --memory 10000 --arch resnet18        # flat memory
    python scripts/bench_score.py --device cuda --kinds uncompressed --count 20000 --distinct 48 \
        --marginal 4000 --workers 15 --batch-size 256 --naive-count 24   # GPU (scripts/gpu_check.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

KINDS = ("uncompressed", "jpeg2000-lossless", "jpeg2000-radiographs")
DEFAULT_KINDS = ["uncompressed", "jpeg2000-radiographs"]


def copy_radiographs(folder: Path, count: int) -> list[Path]:
    """Real JPEG 2000 lossless chest radiographs (pydicom-data RG1_J2KR 1955x1841, RG3_J2KR 1760x2140),
    copied ``count`` times with fresh UIDs. Synthetic images compress and decode unrealistically fast;
    these have the entropy of real exposures."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    sources = [get_testdata_file(name) for name in ("RG1_J2KR.dcm", "RG3_J2KR.dcm")]
    if not all(sources):
        raise SystemExit("jpeg2000-radiographs needs pydicom-data (pip install pydicom-data)")
    datasets = [pydicom.dcmread(src) for src in sources]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds = datasets[i % len(datasets)]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"scan{i:05d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_dicoms(
    folder: Path, count: int, rows: int, cols: int, kind: str = "uncompressed", distinct: int = 0
) -> list[Path]:
    """16-bit DX files: a smooth synthetic body plus noise, distinct UIDs; with ``distinct``, only that
    many files are written and the rest of the ``count`` are hard links to them.

    JPEG 2000 lossless encoding of a 2k x 2.5k image takes seconds, so at most 4 distinct images are
    encoded and their codestreams reused (every file is still decoded in full by the contenders).
    """
    written = min(count, distinct) if distinct else count
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    base = 2000 + 1500 * np.exp(
        -(((xx - cols / 2) / (cols / 3)) ** 2 + ((yy - rows / 2) / (rows / 2.5)) ** 2)
    )
    rng = np.random.default_rng(0)
    study = generate_uid()
    paths = []
    encoded: list[tuple[bytes, object]] = []  # (PixelData, file meta transfer syntax) of compressed images
    for i in range(written):
        pixels = None
        if kind == "uncompressed" or len(encoded) < 4:
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
        if kind == "uncompressed":
            ds.PixelData = pixels.tobytes()
        elif pixels is not None:
            ds.PixelData = pixels.tobytes()
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
            encoded.append((ds.PixelData, ds.file_meta.TransferSyntaxUID))
        else:
            ds.PixelData, ds.file_meta.TransferSyntaxUID = encoded[i % len(encoded)]
            ds["PixelData"].is_undefined_length = True
            ds["PixelData"].VR = "OB"
        path = folder / f"scan{i:05d}"  # no extension: found by content
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    for i in range(written, count):
        path = folder / f"scan{i:05d}"
        os.link(paths[i % written], path)
        paths.append(path)
    return paths


def link_subset(paths: list[Path], folder: Path) -> Path:
    """A folder holding hard links to ``paths`` (the marginal-rate run scores exactly these)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        target = folder / path.name
        if not target.exists():
            os.link(path, target)
    return folder


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


def pydicom_naive(paths: list[Path], bundle_path: Path, device: torch.device) -> float:
    """The loop a first script would use: one scan at a time, pydicom's full decode and its own
    modality/VOI LUT functions, PIL resize, then the model (torch's default threads)."""
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from xraytriage.models import load_bundle

    t0 = time.perf_counter()
    b = load_bundle(bundle_path)
    model = b.model.to(device).eval()
    size, mean, std = b.preprocess.image_size, b.preprocess.mean, b.preprocess.std
    with torch.inference_mode():
        for p in paths:
            ds = pydicom.dcmread(p)
            arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
            if ds.PhotometricInterpretation == "MONOCHROME1":
                arr = arr.max() - arr
            arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6)
            small = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
            x = torch.from_numpy((small - mean) / std)[None, None].float().to(device)
            b.probabilities(model(x)).cpu()
    return len(paths) / (time.perf_counter() - t0)


def naive(paths: list[Path], bundle_path: Path, device: torch.device, threads: int | None) -> float:
    """The same one-at-a-time loop, but decoding with this project's ``load_image`` (so the ratio
    against it isolates batching, workers and the inference set-up from the decoder)."""
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


def decode_only(paths: list[Path], bundle_path: Path) -> float:
    """Scans/s of read -> decode -> preprocess alone, on one core (one decoding worker's rate)."""
    import cv2

    from xraytriage.data.tensors import image_to_tensor
    from xraytriage.io import load_image
    from xraytriage.models import load_bundle

    b = load_bundle(bundle_path)
    default_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        t0 = time.perf_counter()
        for p in paths:
            image, _ = load_image(p, b.preprocess)
            image_to_tensor(image, b.preprocess, b.model_config.in_channels)
        return len(paths) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(default_threads)
        cv2.setNumThreads(cv_threads)


def model_ceiling(
    bundle_path: Path,
    device: torch.device,
    batch_size: int,
    threads: int | None,
    seconds: float = 5.0,
    compile: bool = False,
    extra_batches: tuple[int, ...] = (),
) -> dict[str, float]:
    """Forward passes alone on pre-made tensors: eager batch 1 (the naive loop's model), and at
    ``batch_size`` each engine's forward pass (PyTorch: BatchNorm folded, channels_last; ONNX
    Runtime on CPU), also at ``extra_batches``; with ``compile``, also PyTorch under ``torch.compile``
    (compilation not timed)."""
    from xraytriage.models import load_bundle
    from xraytriage.scoring.engine import prepare_model, select_runner

    b = load_bundle(bundle_path)
    size, channels = b.preprocess.image_size, b.model_config.in_channels
    default_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    eager = b.model.to(device).eval()
    model = prepare_model(b.model, device)

    def runner(engine: str, compile: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        return select_runner(
            model, device, engine, compile=compile, in_channels=channels, image_size=size
        ).forward

    def rate(net: Callable[[torch.Tensor], torch.Tensor], n: int, channels_last: bool) -> float:
        x = torch.randn(n, channels, size, size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            net(x)  # warm-up: kernel selection, allocations
            done, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds or done < 2 * n:
                net(x)
                done += n
            if device.type == "cuda":
                torch.cuda.synchronize()
        return done / (time.perf_counter() - t0)

    try:
        rates = {"eager batch 1": rate(eager, 1, False)}
        engines = [("torch", runner("torch"), True)]
        if device.type == "cpu":
            engines.append(("onnxruntime", runner("onnxruntime"), False))
        for n in dict.fromkeys([*extra_batches, batch_size]):  # the engines alternate at each size
            for name, forward, channels_last in engines:
                rates[f"{name} engine batch {n}"] = rate(forward, n, channels_last)
        if compile:
            rates[f"compiled torch engine batch {batch_size}"] = rate(
                runner("torch", compile=True), batch_size, True
            )
        return rates
    finally:
        torch.set_num_threads(default_threads)


def fresh(path: Path) -> Path:
    """The command resumes existing outputs: start from none so every scan is timed."""
    path.unlink(missing_ok=True)
    path.with_name(f"{path.stem}.errors.csv").unlink(missing_ok=True)
    return path


def command(
    folder: Path,
    bundle: Path,
    out: Path,
    args: argparse.Namespace,
    workers: int | None = None,
    threads: int | None = None,
    engine: str = "auto",
) -> float:
    from xraytriage.scoring import ScoreOptions, score

    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    summary = score(
        ScoreOptions(
            model=bundle,
            input=folder,
            out=out,
            batch_size=args.batch_size,
            workers=args.workers if workers is None else workers,
            device=args.device,
            compile=args.compile,
            engine=engine,
            threads=args.threads if threads is None else threads,
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=64, help="files per input kind")
    ap.add_argument(
        "--distinct", type=int, default=0, help="distinct files per kind; the rest are hard links"
    )
    ap.add_argument("--rows", type=int, default=2500)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=DEFAULT_KINDS, help="input kinds to time")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, help="CPU inference threads for the command (default: its own)")
    ap.add_argument(
        "--split",
        nargs="*",
        default=[],
        metavar="W:T",
        help="also time the command with W decoding workers and T inference threads (T=0: default)",
    )
    ap.add_argument(
        "--engines",
        nargs="+",
        choices=["auto", "torch", "onnxruntime"],
        default=["auto", "torch"],
        help="time the command with each of these --engine values (auto = its default)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="time every contender N times, interleaved; report medians"
    )
    ap.add_argument("--skip-naive", action="store_true", help="time only the command")
    ap.add_argument("--naive-count", type=int, default=0, help="files for the naive loop (default: all)")
    ap.add_argument(
        "--marginal", type=int, default=0, metavar="M", help="also time the first M files: steady-state rate"
    )
    ap.add_argument("--ceiling-seconds", type=float, default=5.0, help="time per model-only measurement")
    ap.add_argument(
        "--ceiling-batches",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also time the model-only ceiling of each engine at these batch sizes",
    )
    ap.add_argument("--memory", type=int, default=0, metavar="N", help="flat-memory check on N tiny PNGs")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    if args.marginal and not 0 < args.marginal < args.count:
        raise SystemExit("--marginal must be between 0 and --count")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_score_"))
    graphs = work / "user-cache"  # the exported-graph cache starts empty: the first run pays the export
    shutil.rmtree(graphs, ignore_errors=True)
    os.environ["XRAYTRIAGE_CACHE_DIR"] = str(graphs)
    if args.memory:
        print(json.dumps(memory_check(args.memory, args, work), indent=1))
        return
    from xraytriage.utils.runtime import resolve_device

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    files = {
        kind: copy_radiographs(work / kind, args.count)
        if kind == "jpeg2000-radiographs"
        else make_dicoms(work / kind, args.count, args.rows, args.cols, kind, args.distinct)
        for kind in args.kinds
    }
    bundle = make_bundle(work / "model.pt", args.arch, args.image_size)
    sizes = ", ".join(
        f"{k} {sum(p.stat().st_size for p in v) / len(v) / 2**20:.1f} MiB" for k, v in files.items()
    )
    print(
        f"wrote {args.count} DICOMs per kind ({args.distinct or args.count} distinct; synthetic "
        f"{args.cols}x{args.rows}; radiographs ~2k) in {time.perf_counter() - t0:.0f} s "
        f"(mean file: {sizes}); device={device}, arch={args.arch}, image_size={args.image_size}, "
        f"batch={args.batch_size}, workers={args.workers}, cores={os.cpu_count()}, "
        f"torch threads={torch.get_num_threads()}",
        flush=True,
    )
    first = files[args.kinds[0]]
    naive(first[:2], bundle, device, None)  # warm caches and kernels for every contender
    ceiling = model_ceiling(
        bundle,
        device,
        args.batch_size,
        args.threads,
        args.ceiling_seconds,
        args.compile,
        tuple(args.ceiling_batches),
    )
    print("model only (pre-made tensors, no decoding):")
    for name, rate in ceiling.items():
        print(f"  {name:34s} {rate:8.1f} scans/s")
    figures: dict = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "arch": args.arch,
        "image_size": args.image_size,
        "batch": args.batch_size,
        "workers": args.workers,
        "cores": os.cpu_count(),
        "ceiling": ceiling,
        "kinds": {},
    }
    for kind, paths in files.items():
        subset = paths[: args.naive_count] if args.naive_count else paths
        print(f"{kind}:", flush=True)
        decode = decode_only(subset, bundle)
        runs: dict[str, list[float]] = {"decode + preprocess only (1 core)": [decode]}
        for _ in range(args.repeat):  # contenders interleaved, so drift on a shared machine hits all alike
            for name, rate in contenders(kind, subset, bundle, device, work, graphs, args).items():
                runs.setdefault(name, []).append(rate)
        report(runs)
        summary = {"contenders": runs, "decode_per_core": decode}
        command_rates = runs.get("command") or next(
            (r for n, r in runs.items() if n.startswith("command")), []
        )
        if command_rates:
            summary["command_scans_per_s"] = float(np.median(command_rates))
        if args.marginal and command_rates:  # on CPU, the run that found the exported graph cached
            rate = (runs.get("command, graph already cached") or command_rates)[-1]
            summary["steady_state_scans_per_s"] = marginal_rate(kind, paths, bundle, work, args, rate)
            steady = summary["steady_state_scans_per_s"]
            print(f"  {'steady state (marginal files/s)':40s} {steady:8.1f} scans/s")
        summary["bound"] = bound(decode, args.workers, ceiling, args.batch_size, summary)
        print(f"  {summary['bound']}", flush=True)
        figures["kinds"][kind] = summary
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def marginal_rate(
    kind: str, paths: list[Path], bundle: Path, work: Path, args: argparse.Namespace, full_rate: float
) -> float:
    """Scans/s of the files beyond the first M (``full_rate``: the command's rate on all of them, timed
    already): the command's fixed start-up cancels out."""
    small = link_subset(paths[: args.marginal], work / f"{kind}_first{args.marginal}")
    engine = args.engines[0]
    t_small = args.marginal / command(small, bundle, fresh(work / f"marg_{kind}.csv"), args, engine=engine)
    return (len(paths) - args.marginal) / max(len(paths) / full_rate - t_small, 1e-9)


def bound(decode: float, workers: int, ceiling: dict[str, float], batch: int, summary: dict) -> str:
    """Which side limits the command: the decoding workers together, or the model's forward pass."""
    feed = decode * workers
    model = max((v for k, v in ceiling.items() if k.endswith(f"batch {batch}")), default=float("nan"))
    side = "decoding" if feed < model else "the model"
    reached = summary.get("steady_state_scans_per_s") or summary.get("command_scans_per_s")
    share = (
        f"; the command reached {reached:.0f}/s, {100 * reached / min(feed, model):.0f} % of it"
        if reached
        else ""
    )
    return (
        f"bound: {side} ({workers} workers x {decode:.0f} scans/s = {feed:.0f}/s to decode, "
        f"model {model:.0f}/s at batch {batch}){share}"
    )


def contenders(
    kind: str,
    subset: list[Path],
    bundle: Path,
    device: torch.device,
    work: Path,
    graphs: Path,
    args: argparse.Namespace,
) -> dict[str, float]:
    """One timing of every contender on one input kind."""
    results: dict[str, float] = {}
    if not args.skip_naive:
        results["naive: pydicom + PIL, 1 scan at a time"] = pydicom_naive(subset, bundle, device)
        results["naive: our decoder, 1 scan at a time"] = naive(subset, bundle, device, None)
        if device.type == "cpu":
            results["naive: our decoder, 1 thread"] = naive(subset, bundle, device, 1)
    for engine in args.engines:
        name = "command" if engine == "auto" else f"command --engine {engine}"
        if engine == "auto":
            shutil.rmtree(graphs, ignore_errors=True)  # a first run: the export is timed
        out = fresh(work / f"scores_{kind}_{engine}.csv")
        results[name] = command(work / kind, bundle, out, args, engine=engine)
    if "auto" in args.engines and device.type == "cpu":  # a rerun finds the exported graph cached
        out = fresh(work / f"scores_{kind}_auto_rerun.csv")
        results["command, graph already cached"] = command(work / kind, bundle, out, args)
    for split in args.split:
        w, t = (int(v) for v in split.split(":"))
        out = fresh(work / f"scores_{kind}_{w}_{t}.csv")
        results[f"command ({w} workers, {t or 'default'} threads)"] = command(
            work / kind, bundle, out, args, workers=w, threads=t or None
        )
    return results


def report(runs: dict[str, list[float]]) -> None:
    """Median scans/s per contender; ratios against the naive loops are medians of the per-repetition
    ratios (each measured in the same repetition), with their range when repeated."""
    base = runs.get("naive: pydicom + PIL, 1 scan at a time")
    ours = runs.get("naive: our decoder, 1 scan at a time")

    def ratio(rates: list[float], against: list[float], label: str) -> str:
        per_run = [r / b for r, b in zip(rates, against)]
        text = f"x{float(np.median(per_run)):.2f} {label}"
        return text + (f" ({min(per_run):.2f}-{max(per_run):.2f})" if len(per_run) > 1 else "")

    for name, rates in runs.items():
        text = ""
        if base and not name.startswith("decode"):
            text = ratio(rates, base, "vs naive")
            if ours:
                text += ", " + ratio(rates, ours, "vs naive with our decoder")
        spread = f" ({min(rates):.1f}-{max(rates):.1f})" if len(rates) > 1 else ""
        print(f"  {name:40s} {float(np.median(rates)):8.1f} scans/s{spread}   {text}")


if __name__ == "__main__":
    main()
