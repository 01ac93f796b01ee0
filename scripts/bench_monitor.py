"""Does ``monitor`` stay quiet on noise, alert on a new scanner, and does CBPE estimate the miss rate?

Usage: .venv/bin/python scripts/bench_monitor.py [--repeats 200] [--detection-repeats 50]
       [--cbpe-repeats 200] [--patients 600] [--epochs 5] [--skip-model] [--seed 0]   (0 repeats: skip)

1. False alerts: ``--repeats`` times, a calibrated synthetic validation reference (500 scans) and a fresh
   draw of the same population as deployed scores (4 ISO weeks x 3 sites of 150/100/60 scans a week:
   1 240 scans, 100 checks a run). Counts runs with any alert (goal: 0) and, for contrast, checks whose
   raw p-value is below 0.05 (what a per-check test without BH and limits would raise).
1b. Detection: ``--detection-repeats`` runs with a probability-level shift at site B in one week
   (p -> p ** 0.6, OOD score + 1.5 SD): how often is site B / that week named, and by which measure.
2. CBPE on calibrated scans: ``--cbpe-repeats`` labelled samples of 300 scans whose labels are drawn
   from their probabilities; how often the 95 % expected-miss-rate interval holds the true miss rate.
3. A real new scanner: a tiny ResNet-18 trained on the synthetic DICOMs (``xraytriage train``), its
   validation probabilities as the reference (what the bundle's scope record holds after issue 16's
   merge), the test scans over 2 ISO weeks and their sites; in week 2, site SITE-B's scans are replaced
   by darker, noisier copies (pixel values x 0.55 towards black plus Gaussian noise of 4 % of the range,
   new SOPInstanceUIDs). Which alerts fire, and CBPE against the true miss rate on both copies.
   (This branch's scores.csv has no study_date/site columns yet: the benchmark adds them from the
   manifest, as ``score`` will once the scope columns are merged.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

WEEKS = ["2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23"]
SITES = {"A": 150, "B": 100, "C": 60}
BY = ["site", "manufacturer", "view"]


LEVELS = (0.01, 0.001)  # false_alert_rate values compared (0.001 is the default)


def false_alerts(repeats: int, seed: int) -> dict[str, float]:
    from xraytriage.config import MonitorConfig
    from xraytriage.monitoring.compare import monitor_scores
    from xraytriage.monitoring.deployed import DeployedScores
    from xraytriage.monitoring.simulation import calibrated_reference, deployed_scores

    cfg = MonitorConfig()
    runs_alerting = dict.fromkeys(LEVELS, 0)
    alerts = raw = tests = 0
    started = time.perf_counter()
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        ref = calibrated_reference(rng, 500)
        frame = deployed_scores(rng, ref, WEEKS, SITES)
        frame["in_scope"] = frame["in_scope"].astype("boolean")
        result = monitor_scores(DeployedScores(frame, ["sim"], len(frame), 0, True, True), ref, cfg)
        for level in LEVELS:  # the verdict at another level, from the same q-values and limits
            runs_alerting[level] += any(
                c.q_value is not None and c.q_value <= level and c.effect >= c.limit for c in result.checks
            )
        alerts += len(result.alerts)
        raw += sum(c.p_value is not None and c.p_value < 0.05 for c in result.checks)
        tests += result.tests
    return {
        "runs": repeats,
        **{f"runs_with_alert_at_{level:g}": n for level, n in runs_alerting.items()},
        "alerts_at_default": alerts,
        "checks": tests,
        "raw_p_below_0.05": raw,
        "seconds_per_run": (time.perf_counter() - started) / repeats,
    }


def detection(repeats: int, seed: int) -> dict[str, object]:
    """Probability-level shift: at site B in week 3 every probability becomes p ** 0.6 (a scanner that
    makes the model see more disease) and the OOD score rises by 1.5 SD. How often is it named?"""
    from xraytriage.config import MonitorConfig
    from xraytriage.monitoring.compare import monitor_scores
    from xraytriage.monitoring.deployed import DeployedScores
    from xraytriage.monitoring.simulation import Population, calibrated_reference, deployed_scores

    found = dict.fromkeys(("probability_shift", "flagged_rate", "ood_shift", "any"), 0)
    elsewhere = 0
    for r in range(repeats):
        rng = np.random.default_rng(20_000 + seed + r)
        ref = calibrated_reference(rng, 500)
        frame = deployed_scores(
            rng, ref, WEEKS, SITES, {("B", WEEKS[2]): Population(power=0.6, ood_shift=3.0)}
        )
        frame["in_scope"] = frame["in_scope"].astype("boolean")
        alerts = monitor_scores(
            DeployedScores(frame, ["sim"], len(frame), 0, True, True), ref, MonitorConfig()
        ).alerts
        named = {a.measure for a in alerts if a.group == "B" and a.window == "2026-W47"}
        for measure in named & found.keys():
            found[measure] += 1
        found["any"] += bool(named)
        elsewhere += any(a.window not in ("2026-W47", "all") or a.group not in ("B", "all") for a in alerts)
    return {"repeats": repeats, "site_B_week_47_named_by": found, "runs_alerting_elsewhere": elsewhere}


def cbpe_coverage(repeats: int, seed: int, n: int = 300) -> dict[str, float]:
    from xraytriage.monitoring.performance import expected_miss_rate
    from xraytriage.monitoring.simulation import draw_probabilities

    hits, errors = 0, []
    for r in range(repeats):
        rng = np.random.default_rng(10_000 + seed + r)
        p = draw_probabilities(rng, n)
        y = rng.random(n) < p
        est = expected_miss_rate(p, 0.2, 2000, 0.95, rng)
        true_miss = float((y & (p < 0.2)).sum() / y.sum())
        hits += est.miss_rate_low <= true_miss <= est.miss_rate_high
        errors.append(abs(est.miss_rate - true_miss))
    return {"repeats": repeats, "coverage_95": hits / repeats, "mean_abs_error": float(np.mean(errors))}


# ------------------------------------------------------------------------------ the real new scanner
def darker_noisier_copy(src: Path, dest: Path, rng: np.random.Generator) -> None:
    """Pixel values 0.55 of the way towards black (MONOCHROME1: black is the top of the range) plus
    noise; uncompressed, a new SOPInstanceUID and Manufacturer 'NewScanner'."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.dcmread(src)
    arr = ds.pixel_array.astype(np.float64)
    top = float(2 ** int(ds.BitsStored) - 1)
    dark = arr * 0.55 if ds.PhotometricInterpretation == "MONOCHROME2" else top - (top - arr) * 0.55
    noisy = np.clip(dark + rng.normal(0, 0.04 * top, arr.shape), 0, top)
    ds.PixelData = noisy.astype(ds.pixel_array.dtype).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Manufacturer = "NewScanner"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)


def _train(work: Path, patients: int, epochs: int, seed: int) -> tuple[Path, Path]:
    from xraytriage.data.synthetic import SyntheticSpec, generate_dataset

    manifest = generate_dataset(work / "data", SyntheticSpec(n_patients=patients, size=128, seed=seed), False)
    overrides = [
        f"data.manifest={manifest}",
        "model.arch=resnet18",
        "preprocess.image_size=64",
        f"train.epochs={epochs}",
        "train.batch_size=32",
        "train.histogram_every_epochs=0",
        f"seed={seed}",
    ]
    config = Path(__file__).resolve().parents[1] / "src/xraytriage/resources/demo.yaml"
    command = [sys.executable, "-m", "xraytriage", "train", "--no-progress", "--config", str(config)]
    subprocess.run([*command, "--out", str(work / "run"), *overrides], check=True, capture_output=True)
    return work / "run" / "model.pt", manifest


def _sensitivity_line(name: str, frame: pd.DataFrame, threshold: float, est) -> dict[str, object]:  # type: ignore[no-untyped-def]
    pos = frame["finding"] == 1
    missed = int((pos & (frame["prob_finding"] < threshold)).sum())
    return {
        "scans": name,
        "n": len(frame),
        "positives": int(pos.sum()),
        "true_miss_rate": missed / int(pos.sum()),
        "cbpe_miss_rate": est.miss_rate,
        "cbpe_low": est.miss_rate_low,
        "cbpe_high": est.miss_rate_high,
    }


def new_scanner(patients: int, epochs: int, seed: int) -> dict[str, object]:
    from xraytriage.config import MonitorConfig
    from xraytriage.inference import predict_manifest
    from xraytriage.models.bundle import load_bundle
    from xraytriage.monitoring.compare import monitor_scores
    from xraytriage.monitoring.deployed import DeployedScores
    from xraytriage.monitoring.performance import expected_miss_rate
    from xraytriage.monitoring.reference import ValidationReference

    work = Path(tempfile.mkdtemp(prefix="bench_monitor_"))
    started = time.perf_counter()
    bundle_path, manifest = _train(work, patients, epochs, seed)
    trained = time.perf_counter() - started
    bundle = load_bundle(bundle_path)
    frame = pd.read_csv(manifest)
    frame["path"] = [str(manifest.parent / p) for p in frame["path"]]
    val = predict_manifest(bundle, frame[frame["split"] == "val"], num_workers=0, progress=None)
    test = predict_manifest(bundle, frame[frame["split"] == "test"], num_workers=0, progress=None)
    rng = np.random.default_rng(seed)
    test = test.assign(study_date=np.where(rng.random(len(test)) < 0.5, WEEKS[0], WEEKS[1]))
    new = test[(test["site"] == "SITE-B") & (test["study_date"] == WEEKS[1])].copy()
    dark_all = test.copy()
    dark_all["path"] = [str(work / "dark_all" / Path(p).name) for p in test["path"]]
    for src, dest in zip(test["path"], dark_all["path"]):
        darker_noisier_copy(Path(src), Path(dest), rng)
    dark_scored = predict_manifest(bundle, dark_all, num_workers=0, progress=None)
    new_scored = dark_scored.set_index(dark_scored["path"].map(lambda s: Path(s).name)).loc[
        new["path"].map(lambda s: Path(s).name)
    ]
    deployed = pd.concat(
        [test.drop(new.index), new.assign(prob_finding=new_scored["prob_finding"].to_numpy())],
        ignore_index=True,
    )
    table = pd.DataFrame(
        {
            "prob_finding": deployed["prob_finding"].to_numpy(dtype=float),
            "in_scope": pd.array([pd.NA] * len(deployed), dtype="boolean"),
            "ood_score": np.nan,
            "study_date": deployed["study_date"].to_numpy(),
            "site": deployed["site"].astype(str).to_numpy(),
            "manufacturer": "unknown",
            "view": deployed["view"].astype(str).to_numpy(),
        }
    )
    val_probs = val["prob_finding"].to_numpy(dtype=float)
    bundle.scope = {"validation": {"probabilities": {"finding": val_probs.tolist()}, "n_scans": len(val)}}
    ref = ValidationReference.from_bundle(bundle, bundle_path)
    cfg = MonitorConfig(min_scans=20)
    result = monitor_scores(DeployedScores(table, ["bench"], len(table), 0, False, False), ref, cfg)
    threshold = ref.thresholds["finding"]
    rows = []
    for name, scored in (
        ("test scans as acquired", test),
        ("the same scans, darker and noisier", dark_scored),
    ):
        est = expected_miss_rate(scored["prob_finding"].to_numpy(float), threshold, 5000, 0.95, rng)
        rows.append(_sensitivity_line(name, scored, threshold, est))
    val_est = expected_miss_rate(val_probs, threshold, 5000, 0.95, rng)
    rows.insert(0, _sensitivity_line("validation scans", val, threshold, val_est))
    return {
        "train_seconds": trained,
        "threshold": threshold,
        "val_scans": len(val),
        "test_scans": len(test),
        "new_scanner_scans": len(new),
        "alerts": [
            f"{a.what}, {a.where}: {a.value:.3f} vs validation {a.reference:.3f} ({a.why})"
            for a in result.alerts
        ],
        "checks": result.tests,
        "cbpe": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--detection-repeats", type=int, default=50)
    parser.add_argument("--cbpe-repeats", type=int, default=200)
    parser.add_argument("--patients", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out: dict[str, object] = {}
    if args.repeats:
        out["false_alerts"] = false_alerts(args.repeats, args.seed)
        print(json.dumps(out["false_alerts"], indent=1), flush=True)
    if args.detection_repeats:
        out["detection"] = detection(args.detection_repeats, args.seed)
        print(json.dumps(out["detection"], indent=1), flush=True)
    if args.cbpe_repeats:
        out["cbpe_calibrated"] = cbpe_coverage(args.cbpe_repeats, args.seed)
        print(json.dumps(out["cbpe_calibrated"], indent=1), flush=True)
    if not args.skip_model:
        out["new_scanner"] = new_scanner(args.patients, args.epochs, args.seed)
        print(json.dumps(out["new_scanner"], indent=1, default=str), flush=True)


if __name__ == "__main__":
    main()
