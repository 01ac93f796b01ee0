"""Measure the DICOM side of xraytriage: conformance, PACS round trip, watch latency, cost of SR writing.

1. dciodvfy errors on every demo file (DX/CR, the three out-of-scope variants) and on every result
   object (SR, Grad-CAM Secondary Capture) -- goal 0;
2. cost of ``--dicom-out``: the same scans scored in one process with and without it, interleaved
   ``--repeat`` times (medians), plus the time spent inside the SR writer itself, as a share of the
   scoring time -- goal under 10 %;
3. Orthanc round trip (where the Debian ``orthanc`` package is installed): scans pushed over REST, SRs
   sent by C-STORE: objects sent = stored = scans scored; sent again: nothing added;
4. ``score --watch`` latency: a file renamed into the inbox -> its SR stored in Orthanc (goal: under
   2 s plus inference), then kill -9 mid-stream and a restart: every scan once, no object twice.

  python scripts/bench_dicom_out.py --scans 48 --repeat 3 --watch-files 8
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def make_bundle(path: Path, arch: str, image_size: int) -> Path:
    import torch

    from xraytriage.config import ModelConfig, PreprocessConfig
    from xraytriage.models import build_model, save_bundle

    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, weights=None, task="binary")
    model = build_model(cfg, num_outputs=1)
    save_bundle(
        path, model, cfg, PreprocessConfig(image_size=image_size), ["finding"], {"finding": 0.5}, "binary"
    )
    return path


def conformance(files: list[Path]) -> tuple[int, int, dict[str, int]]:
    """(files checked, errors in all, files per IOD)."""
    from xraytriage.io.conformance import check_file

    errors, iods = 0, {}
    for path in files:
        result = check_file(path)
        errors += len(result.errors)
        iods[result.iod] = iods.get(result.iod, 0) + 1
    return len(files), errors, iods


def timed_score(inbox: Path, bundle: Path, out: Path, dicom_out: Path | None) -> tuple[float, float]:
    """(scoring wall time, seconds the scoring loop spent in DicomResultSink.record, i.e. waiting for a
    batch's DICOM results to be written) for one in-process run."""
    from xraytriage.scoring import ScoreOptions, score
    from xraytriage.scoring import dicom_out as sink

    spent = [0.0]
    original = sink.DicomResultSink.record

    @functools.wraps(original)
    def record(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    sink.DicomResultSink.record = record  # type: ignore[method-assign]
    try:
        opts = ScoreOptions(bundle, inbox, out, workers=1, progress=False, dicom_out=dicom_out)
        start = time.perf_counter()
        summary = score(opts)
        elapsed = time.perf_counter() - start
    finally:
        sink.DicomResultSink.record = original  # type: ignore[method-assign]
    assert summary.failed == 0
    return elapsed, spent[0]


def sr_cost(folder: Path, bundle: Path, work: Path, tag: str, repeat: int) -> float:
    """Score ``folder`` with and without --dicom-out, interleaved; print and return the plain median."""
    n = sum(1 for _ in folder.iterdir())
    plain, with_sr, writer = [], [], []
    for k in range(repeat):
        plain.append(timed_score(folder, bundle, work / f"{tag}-plain{k}.csv", None)[0])
        elapsed, inside = timed_score(folder, bundle, work / f"{tag}-sr{k}.csv", work / f"{tag}-sr{k}")
        with_sr.append(elapsed)
        writer.append(inside)
    p, w, inside = statistics.median(plain), statistics.median(with_sr), statistics.median(writer)
    for what, median, runs in (("without", p, plain), ("with   ", w, with_sr)):
        shown = ", ".join(f"{t:.2f}" for t in runs)
        print(f"[{tag}, {n} scans] score {what} --dicom-out: median {median:.2f} s ({shown})")
    print(
        f"[{tag}] SR writing: the scoring loop waited {inside:.3f} s for it = {100 * inside / w:.1f} % "
        "of scoring time "
        f"({1000 * inside / n:.1f} ms per scan); wall-time difference {100 * (w - p) / w:+.1f} %"
    )
    return p


def watch_process(inbox: Path, bundle: Path, work: Path, destination: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "xraytriage", "score", str(inbox), "--model", str(bundle)]
    command += ["--out", str(work / "watch.csv"), "--dicom-out", str(work / "watch_results"), "--watch"]
    command += ["--workers", "0", "--batch-size", "1", "--settle", "0", "--poll", "0.05", "--no-progress"]
    command += ["--send-to", destination, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    log = open(work / "watch.log", "a")  # noqa: SIM115 - the child writes to it for its whole life
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def drop(scan: Path, inbox: Path) -> float:
    shutil.copyfile(scan, inbox / f"{scan.name}.part")
    os.replace(inbox / f"{scan.name}.part", inbox / scan.name)
    return time.perf_counter()


def sr_uid_for(scan: Path, bundle: Path) -> str:
    import pydicom

    from xraytriage.models import load_bundle
    from xraytriage.scoring.dicom_out import result_uids

    ds = pydicom.dcmread(scan, stop_before_pixels=True)
    return result_uids(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), load_bundle(bundle).model_id)[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scans", type=int, default=48)
    parser.add_argument("--size", type=int, default=512, help="demo image size (pixels)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--watch-files", type=int, default=8)
    parser.add_argument(
        "--radiographs",
        type=int,
        default=0,
        help="also time SR cost on N copies of pydicom-data's JPEG 2000 radiographs",
    )
    args = parser.parse_args()

    from support.orthanc import orthanc_binary, start_orthanc
    from xraytriage.data.synthetic import SyntheticSpec, generate_dataset, generate_scope_variants
    from xraytriage.io.conformance import dciodvfy_available
    from xraytriage.pacs.send import CStoreSender, DicomNode, iter_objects, send_paths

    work = Path(tempfile.mkdtemp(prefix="bench-dicom-out-"))
    try:
        spec = SyntheticSpec(n_patients=args.scans, max_images_per_patient=1, size=args.size, seed=5)
        generate_dataset(work / "data", spec, progress=False)
        variants = list(generate_scope_variants(work / "variants", seed=5, size=args.size).values())
        scans = sorted((work / "data" / "images").glob("*.dcm"))
        bundle = make_bundle(work / "model.pt", args.arch, args.image_size)
        print(f"{len(scans)} demo scans {args.size}x{args.size}, bundle {args.arch} at {args.image_size} px")

        # 2. cost of --dicom-out (first: one untimed warm-up run, exported graph cached)
        timed_score(work / "data" / "images", bundle, work / "warm.csv", None)
        p = sr_cost(work / "data" / "images", bundle, work, "demo", args.repeat)
        if args.radiographs:
            sys.path.insert(0, str(ROOT / "scripts"))
            from bench_score import copy_radiographs

            copy_radiographs(work / "radiographs", args.radiographs)
            sr_cost(work / "radiographs", bundle, work, "radiographs", args.repeat)

        # 1. conformance
        results = list(iter_objects(work / "demo-sr0"))
        if dciodvfy_available():
            for name, files in (("demo files", scans + variants), ("result objects", results)):
                n, errors, iods = conformance(files)
                kinds = ", ".join(f"{k} {v}" for k, v in iods.items())
                print(f"dciodvfy on {n} {name}: {errors} errors ({kinds})")
        else:
            print("dciodvfy not installed: conformance not measured")

        if orthanc_binary() is None:
            print("Orthanc not installed: round trip and watch latency not measured")
            return 0
        server = start_orthanc(work / "orthanc")
        try:
            # 3. round trip
            for scan in scans:
                server.upload(scan)
            sender = CStoreSender(DicomNode.parse(server.destination))
            report = send_paths(sender, results)
            stored = len(server.get("/instances")) - len(scans)
            send_paths(CStoreSender(DicomNode.parse(server.destination)), results)
            again = len(server.get("/instances")) - len(scans)
            print(
                f"Orthanc round trip: scans scored {len(scans)}, SRs sent {len(results)}, C-STORE success "
                f"{report.stored}, stored in Orthanc {stored}; after sending all again: {again}"
            )

            # 4. watch latency, then kill -9 + restart
            watch_scans = scans[: args.watch_files]
            for path in results:  # an empty results side in the PACS for the watched scans
                server_id = server.lookup_instance(path.stem.split("_", 1)[1])
                if server_id:
                    import requests

                    requests.delete(f"{server.url}/instances/{server_id}", timeout=30)
            inbox = work / "inbox"
            inbox.mkdir()
            proc = watch_process(inbox, bundle, work, server.destination)
            latencies = []
            try:
                # the first file is the warm-up: its latency includes building the engine
                for k, scan in enumerate(watch_scans[: len(watch_scans) // 2 + 1]):
                    uid = sr_uid_for(scan, bundle)
                    t0 = drop(scan, inbox)
                    while server.lookup_instance(uid) is None:
                        if proc.poll() is not None:
                            raise SystemExit(f"score --watch ended with exit code {proc.returncode}")
                        time.sleep(0.01)
                    if k:
                        latencies.append(time.perf_counter() - t0)
                for scan in watch_scans[len(watch_scans) // 2 + 1 :]:
                    drop(scan, inbox)
                time.sleep(0.3)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            restart = watch_process(inbox, bundle, work, server.destination, "--idle-exit", "2")
            restart.wait(timeout=600)
            rows = (work / "watch.csv").read_text().strip().splitlines()[1:]
            srs = len(list((work / "watch_results").glob("SR_*.dcm")))
            in_pacs = len(server.get("/instances")) - len(scans)
            print(
                "watch latency (file renamed into the inbox -> its SR stored in Orthanc): "
                f"median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s over "
                f"{len(latencies)} files (scoring time per scan in the batch runs: {p / len(scans):.2f} s)"
            )
            print(
                f"watch kill -9 + restart: {len(watch_scans)} files dropped, {len(rows)} rows "
                f"({len({r.split(',')[0] for r in rows})} distinct), {srs} SRs written, {in_pacs} in Orthanc"
            )
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
