"""Hostile inputs and hard kills against ``xraytriage score``: print what escaped, hung, grew or got lost.

Part 1, mutated real radiographs. Sources: pydicom-data's RG1/RG3 chest radiographs (uncompressed and
JPEG 2000) and the real hospital DICOMs in ../shared/data/dicom_samples (JPEG baseline, implicit VR)
when present. Each is mutated, seeded: truncated at a random point, byte-flipped (in the pixel data
or anywhere), and given header lies -- Rows/Columns/bits/samples/frames that disagree with the pixel
data, and a transfer syntax that is not the one the data is in -- plus the issue's decompression
bomb (a 16 x 16 header over a 20000 x 20000 JPEG) and a 1 MB deflated data set that inflates to
1 GiB. All of them are scored by the real command (two
decoding workers, default time limit and memory cap) in a subprocess, which reports:
  untyped   - scans failed as internal_error, scans with neither a row nor an error, a run that raised
  hangs     - scans stopped by the per-file time limit, and whether the run itself finished
  peak RSS  - the largest resident set of any decoding worker (getrusage of the reaped children), and
              the same for the unmutated sources as the baseline, in the same run of this script
Part 2, kill -9 at random moments. A folder grows by a few PNGs before each run into one Parquet
output; each run gets SIGKILL at a random moment (uniform over a clean run's duration) or, for every
fourth kill, the moment the Parquet file is being rewritten (finalisation); a run that ends before its
moment is counted and another is started, until ``--kills`` kills have landed. A last run completes
the output, which is compared with the set of files: rows lost, rows duplicated.

    python scripts/robustness.py                 # >= 500 mutated files, 20 kills
    python scripts/robustness.py --per-source 20 --kills 4   # a quick look
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "dicom_samples"
RADIOGRAPHS = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm", "RG3_J2KR.dcm")
SYNTAXES = {
    "explicit_le": "1.2.840.10008.1.2.1",
    "implicit_le": "1.2.840.10008.1.2",
    "big_endian": "1.2.840.10008.1.2.2",
    "jpeg_baseline": "1.2.840.10008.1.2.4.50",
    "jpeg_lossless": "1.2.840.10008.1.2.4.70",
    "jpeg_ls": "1.2.840.10008.1.2.4.80",
    "j2k_lossless": "1.2.840.10008.1.2.4.90",
    "rle": "1.2.840.10008.1.2.5",
    "deflated": "1.2.840.10008.1.2.1.99",
}


# ------------------------------------------------------------------------------------------- sources
def sources() -> list[Path]:
    from pydicom.data import get_testdata_file

    found = [Path(p) for p in (get_testdata_file(name) for name in RADIOGRAPHS) if p]
    if len(found) < len(RADIOGRAPHS):
        raise SystemExit("needs pydicom-data for the RG1/RG3 radiographs (pip install pydicom-data)")
    if SHARED.is_dir():
        found += sorted(SHARED.glob("*.dcm"))
    return found


def _pixel_start(data: bytes, src: Path) -> int:
    import pydicom

    ds = pydicom.dcmread(src, defer_size=1024)
    elem = ds.get_item("PixelData", keep_deferred=True)
    return int(getattr(elem, "value_tell", 0) or len(data) // 2)


# ----------------------------------------------------------------------------------------- mutations
def truncate(data: bytes, rng: random.Random, start: int) -> bytes:
    where = rng.choice(["header", "pixels", "tail"])
    if where == "header":
        return data[: rng.randrange(132, max(133, start))]
    if where == "pixels":
        return data[: rng.randrange(start, len(data))]
    return data[: len(data) - rng.randrange(1, 64)]


def flip(data: bytes, rng: random.Random, start: int) -> bytes:
    out = bytearray(data)
    lo = start if rng.random() < 0.8 else 132
    for _ in range(rng.choice([1, 2, 5, 20, 100])):
        i = rng.randrange(lo, len(out))
        out[i] ^= rng.randrange(1, 256)
    return bytes(out)


def header_lie(src: Path, rng: random.Random) -> bytes:
    import pydicom

    ds = pydicom.dcmread(src)
    lie = rng.choice(
        ["tiny", "huge", "swap", "off_by_one", "bits", "samples", "frames", "photometric", "sign"]
    )
    if lie == "tiny":
        ds.Rows, ds.Columns = 16, 16
    elif lie == "huge":
        ds.Rows, ds.Columns = 65535, 65535
    elif lie == "swap":
        ds.Rows, ds.Columns = ds.Columns, ds.Rows
    elif lie == "off_by_one":
        ds.Rows = int(ds.Rows) + rng.choice([-1, 1])
    elif lie == "bits":
        ds.BitsAllocated = rng.choice([1, 8, 16, 32])
        ds.BitsStored = rng.choice([1, 8, 12, 16, 31])
    elif lie == "samples":
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
    elif lie == "frames":
        ds.NumberOfFrames = rng.choice([2, 1000, 2**31 - 1])
    elif lie == "photometric":
        ds.PhotometricInterpretation = rng.choice(["PALETTE COLOR", "YBR_FULL_422", "MONOCHROME3", ""])
    else:
        ds.PixelRepresentation = 1 - int(ds.get("PixelRepresentation", 0) or 0)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def syntax_lie(src: Path, rng: random.Random) -> bytes:
    """The file meta names another transfer syntax than the one the data set and pixels are in."""
    import pydicom

    ds = pydicom.dcmread(src)
    current = str(ds.file_meta.TransferSyntaxUID)
    other = rng.choice([uid for uid in SYNTAXES.values() if uid != current])
    meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = other
    buf = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(buf, meta, enforce_standard=True)
    raw = Path(src).read_bytes()
    original = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(original, ds.file_meta, enforce_standard=True)
    body_start = 132 + len(original.getvalue()) if raw[128:132] == b"DICM" else 0
    if raw[128:132] != b"DICM":
        return raw
    return raw[:128] + b"DICM" + buf.getvalue() + raw[body_start:]


def jpeg_bomb(folder: Path, side: int = 20000) -> Path:
    """The issue's bomb: a DICOM claiming 16 x 16 whose JPEG holds ``side`` x ``side`` pixels."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate

    stream = io.BytesIO()
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(stream, format="JPEG", quality=10)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = SYNTAXES["jpeg_baseline"]
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4.5", "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 16, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([stream.getvalue()])
    ds["PixelData"].VR = "OB"
    path = folder / f"bomb_{side}x{side}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def deflate_bomb(folder: Path, zeros: int = 1 << 30) -> Path:
    """A deflated DICOM (zlib over the whole data set) holding ``zeros`` zero bytes: ~1 MB on disk."""
    import struct
    import zlib

    import pydicom
    from pydicom.filebase import DicomBytesIO

    meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = SYNTAXES["deflated"]
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.9"
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientSex = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.9", "F"
    head, body = DicomBytesIO(), DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(head, meta, enforce_standard=True)
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    element = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, zeros)
    path = folder / f"deflate_bomb_{zeros >> 20}MiB.dcm"
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" + head.getvalue())
        fh.write(squeeze.compress(body.getvalue() + element))
        block = bytes(64 << 20)
        for _ in range(zeros // len(block)):
            fh.write(squeeze.compress(block))
        fh.write(squeeze.flush())
    return path


def make_corpus(folder: Path, per_source: int, seed: int) -> Counter[str]:
    """``per_source`` mutations of every source (plus the bomb); returns the count per mutation kind."""
    rng = random.Random(seed)
    kinds: Counter[str] = Counter()
    folder.mkdir(parents=True, exist_ok=True)
    for n, src in enumerate(sources()):
        data = src.read_bytes()
        start = _pixel_start(data, src)
        for i in range(per_source):
            kind = rng.choice(["truncate", "flip", "flip", "header_lie", "syntax_lie"])
            try:
                if kind == "truncate":
                    out = truncate(data, rng, start)
                elif kind == "flip":
                    out = flip(data, rng, start)
                elif kind == "header_lie":
                    out = header_lie(src, rng)
                else:
                    out = syntax_lie(src, rng)
            except Exception as exc:  # a mutation pydicom cannot write: count it, make a flip instead
                kinds[f"unwritable {kind} ({exc.__class__.__name__})"] += 1
                kind, out = "flip", flip(data, rng, start)
            (folder / f"s{n}_{i:04d}_{kind}.dcm").write_bytes(out)
            kinds[kind] += 1
    jpeg_bomb(folder)
    deflate_bomb(folder)
    kinds["bomb"] += 2
    return kinds


# ---------------------------------------------------------------------------------------- scoring
def make_bundle(path: Path, image_size: int = 64) -> Path:
    import torch

    from xraytriage.config import ModelConfig, PreprocessConfig
    from xraytriage.models import build_model, save_bundle

    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18", weights=None, task="binary")
    model = build_model(cfg, num_outputs=1)
    save_bundle(
        path, model, cfg, PreprocessConfig(image_size=image_size), ["finding"], {"finding": 0.5}, "binary"
    )
    return path


def score_pass(folder: Path, bundle: Path, out: Path, workers: int) -> dict[str, object]:
    """Score ``folder`` in this process; what a parent needs to judge it (run as a subprocess)."""
    import logging

    from xraytriage.scoring import ScoreOptions, score
    from xraytriage.scoring.outputs import read_scores

    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    raised = ""
    try:
        summary = score(ScoreOptions(model=bundle, input=folder, out=out, workers=workers, progress=False))
        reasons = dict(summary.failed_by_reason)
    except Exception as exc:  # an escape from the whole run: the worst outcome, reported as such
        raised, reasons = f"{exc.__class__.__name__}: {exc}", {}
    files = sorted(str(p) for p in folder.iterdir())
    scored = set(read_scores(out, ["finding"])["path"]) if out.exists() else set()
    errors_file = out.with_name(f"{out.stem}.errors.csv")
    failed: dict[str, str] = {}
    if errors_file.exists():
        import csv

        with open(errors_file, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            failed = {row["path"]: f"{row['reason']}: {row['message']}" for row in csv.DictReader(fh)}
    bombs = {Path(p).name: failed.get(p, "scored!") for p in files if "bomb_" in Path(p).name}
    return {
        "files": len(files),
        "scored": len(scored),
        "failed": len(failed),
        "unaccounted": len(set(files) - scored - set(failed)),
        "bombs": bombs,
        "reasons": reasons,
        "raised": raised,
        "seconds": time.perf_counter() - started,
        "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "main_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def decode_peak(path: Path, how: str) -> dict[str, object]:
    """How far a process's resident memory rises while it decodes ``path`` the old way (pydicom
    straight to pixels, as before the codestream checks) or with ``load_image``: the peak (VmHWM, reset
    through /proc/self/clear_refs once the modules are imported) minus the resident size before.
    Run as a subprocess of this script."""
    import pydicom

    from xraytriage.io import load_image

    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")  # reset the peak: imports must not count
    before = _status_mb("VmRSS")
    outcome = "decoded"
    try:
        if how == "pydicom":
            pydicom.pixels.pixel_array(pydicom.dcmread(path))
        else:
            load_image(path)
    except Exception as exc:
        outcome = f"{exc.__class__.__name__}: {str(exc)[:120]}"
    return {"outcome": outcome, "grown_mb": _status_mb("VmHWM") - before}


def _decode_peak_subprocess(path: Path, how: str) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--decode-peak", str(path), how]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_pass(folder: Path, bundle: Path, out: Path, workers: int, limit_s: float) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--score-pass", str(folder), str(bundle), str(out), str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"hung": True}
    if done.returncode != 0:
        return {"crashed": done.returncode, "stderr": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def mutations(scratch: Path, per_source: int, seed: int, workers: int) -> None:
    bundle = make_bundle(scratch / "model.pt")
    clean = scratch / "clean"
    clean.mkdir()
    for i, src in enumerate(sources()):
        shutil.copy(src, clean / f"s{i}_{src.name}")
    kinds = make_corpus(scratch / "mutated", per_source, seed)
    total = sum(v for k, v in kinds.items() if not k.startswith("unwritable"))
    print(f"mutated files: {total} from {len(sources())} real radiographs ({dict(sorted(kinds.items()))})")
    base = run_pass(clean, bundle, scratch / "clean.csv", workers, 600)
    hostile = run_pass(scratch / "mutated", bundle, scratch / "mutated.csv", workers, 3600)
    if "hung" in hostile or "crashed" in hostile:
        print(f"RUN FAILED: {hostile}")
        return
    reasons = hostile["reasons"]
    untyped = reasons.get("internal_error", 0) + hostile["unaccounted"] + (1 if hostile["raised"] else 0)
    done = f"scored {hostile['scored']}, failed {hostile['failed']} of {hostile['files']} files"
    print(f"  {done} in {hostile['seconds']:.0f} s")
    print(f"  failure reasons: {dict(sorted(reasons.items()))}")
    for name, outcome in hostile["bombs"].items():
        print(f"  {name}: {outcome}")
        old = _decode_peak_subprocess(scratch / "mutated" / name, "pydicom")
        new = _decode_peak_subprocess(scratch / "mutated" / name, "load_image")
        print(f"    decoding it grows a process's peak RSS by: pydicom as before {old['grown_mb']:.0f} MB")
        print(f"      ({old['outcome'][:90]}); load_image {new['grown_mb']:.0f} MB (refused before decoding)")
    print(
        f"  untyped escapes: {untyped} (internal_error {reasons.get('internal_error', 0)}, "
        f"unaccounted {hostile['unaccounted']}, run raised: {hostile['raised'] or 'no'})"
    )
    print(f"  hangs: {reasons.get('timeout', 0)} scans stopped by the time limit; the run finished: yes")
    print(
        f"  peak worker RSS: {hostile['peak_worker_rss_mb']:.0f} MB on mutated files, "
        f"{base.get('peak_worker_rss_mb', float('nan')):.0f} MB on the unmutated sources "
        f"(ratio {hostile['peak_worker_rss_mb'] / base.get('peak_worker_rss_mb', float('nan')):.2f}); "
        f"main process {hostile['main_rss_mb']:.0f} MB"
    )


# ------------------------------------------------------------------------------------------- kills
def _png_batch(folder: Path, start: int, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(start)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(folder / f"scan{i:05d}.png")


def _start(folder: Path, bundle: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "xraytriage.commands.score", str(folder), "--model", str(bundle)]
    cmd += ["--out", str(out), "--workers", "1", "--batch-size", "4", "--engine", "torch", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_at_finalisation(proc: subprocess.Popen, out: Path) -> bool:
    """SIGKILL the moment the Parquet file's temporary copy appears (the fold into Parquet)."""
    pattern = f".{out.name}."
    while proc.poll() is None:
        if any(name.startswith(pattern) and name.endswith(".tmp") for name in os.listdir(out.parent)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    return False


def kills(scratch: Path, count: int, seed: int, per_run: int) -> None:
    import pandas as pd

    rng = random.Random(seed)
    bundle = make_bundle(scratch / "kill_model.pt")
    folder, out = scratch / "incoming", scratch / "scores.parquet"
    _png_batch(folder, 0, per_run)
    t0 = time.perf_counter()
    reference = _start(folder, bundle, scratch / "reference.parquet")
    reference.wait()
    clean_s = time.perf_counter() - t0
    delivered = at_finalisation = finished_first = 0
    early_codes: Counter[int] = Counter()  # exit codes of the runs that ended before their kill
    added = per_run
    while delivered < count and finished_first < count:  # a run that ends before its kill is retried
        _png_batch(folder, added, per_run)
        added += per_run
        proc = _start(folder, bundle, out)
        finalisation = delivered % 4 == 3  # every fourth kill lands in the Parquet finalisation
        if finalisation:
            hit = _kill_at_finalisation(proc, out)
        else:
            time.sleep(rng.uniform(0.0, clean_s))
            hit = proc.poll() is None
            if hit:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if hit:
            delivered += 1
            at_finalisation += finalisation
        else:
            early_codes[proc.wait()] += 1
            finished_first += 1
    last = _start(folder, bundle, out)
    rc = last.wait()
    table = pd.read_parquet(out)
    expected = {str(folder / f"scan{i:05d}.png") for i in range(added)}
    got = list(table["path"])
    runs = delivered + finished_first
    print(f"kill -9: {runs} runs of {per_run} new scans each (a clean run takes {clean_s:.1f} s)")
    print(
        f"  kills delivered {delivered} ({at_finalisation} during Parquet finalisation), "
        f"runs that ended before their kill {finished_first} (exit codes {dict(early_codes)}); "
        f"final run exit code {rc}"
    )
    print(
        f"  rows expected {len(expected)}, present {len(got)}: lost {len(expected - set(got))}, "
        f"duplicated {len(got) - len(set(got))}, foreign {len(set(got) - expected)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-source", type=int, default=75, help="mutations per source file (7 sources)")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--per-run", type=int, default=24, help="new PNGs added before each killed run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--skip", choices=["mutations", "kills"], action="append", default=[])
    parser.add_argument("--decode-peak", nargs=2, metavar=("FILE", "HOW"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--score-pass", nargs=4, metavar=("FOLDER", "BUNDLE", "OUT", "WORKERS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.decode_peak:
        print(json.dumps(decode_peak(Path(args.decode_peak[0]), args.decode_peak[1])))
        return
    if args.score_pass:
        folder, bundle, out, workers = args.score_pass
        print(json.dumps(score_pass(Path(folder), Path(bundle), Path(out), int(workers))))
        return
    with tempfile.TemporaryDirectory(prefix="xraytriage-robustness-") as tmp:
        scratch = Path(tmp)
        os.environ["XRAYTRIAGE_CACHE_DIR"] = str(scratch / "cache")
        if "mutations" not in args.skip:
            mutations(scratch, args.per_source, args.seed, args.workers)
        if "kills" not in args.skip:
            kills(scratch, args.kills, args.seed, args.per_run)


if __name__ == "__main__":
    main()
