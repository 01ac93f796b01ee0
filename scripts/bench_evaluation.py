"""Benchmark the evaluation: the vectorised patient bootstrap against a naive per-replicate scikit-learn
loop, and the full evaluation against a baseline version of xraytriage, in the same run.

Usage: .venv/bin/python scripts/bench_evaluation.py [--n 10000] [--iterations 1000]
       [--baseline-ref c9248e1] [--repeats 3]

The baseline is the ``src/`` of a git revision (``--baseline-ref``, default: the commit before issue
14's statistics), extracted into a temporary folder and timed in a subprocess on the same data,
alternating with the working tree's version; the ratio of the best times is printed (machine load
makes absolute figures noisy).
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
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def make_frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    pid = rng.integers(0, n // 2, n)
    y = (rng.random(n) < 0.3).astype(float)
    p = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    return pd.DataFrame(
        {
            "patient_id": pid.astype(str),
            "sex": rng.choice(["F", "M"], n),
            "age": rng.uniform(20, 90, n),
            "view": rng.choice(["PA", "AP"], n),
            "finding": y,
            "prob_finding": p,
        }
    )


def time_full_evaluation(n: int, iterations: int, with_files: bool) -> float:
    """One evaluate_predictions call (1 class, overall + sex, age_band, view, sex x age_band), after a
    small warm-up call so that library imports are not timed."""
    from xraytriage.config import EvaluationConfig
    from xraytriage.evaluation.report import evaluate_predictions

    frame = make_frame(n)
    cfg = EvaluationConfig(bootstrap_iterations=iterations, intersections=[["sex", "age_band"]])
    with tempfile.TemporaryDirectory() as tmp:
        warm = EvaluationConfig(bootstrap_iterations=10, intersections=[["sex", "age_band"]])
        out = Path(tmp) / "warm-up" if with_files else None
        evaluate_predictions(make_frame(400), ["finding"], {"finding": 0.5}, warm, out)  # imports, caches
        started = time.perf_counter()
        evaluate_predictions(frame, ["finding"], {"finding": 0.5}, cfg, Path(tmp) if with_files else None)
        return time.perf_counter() - started


def bootstrap_versus_naive(n: int, iterations: int, naive_iterations: int) -> None:
    from sklearn.metrics import average_precision_score, recall_score, roc_auc_score

    from xraytriage.evaluation.bootstrap import BootstrapTask, bootstrap_metrics, patient_codes
    from xraytriage.evaluation.metrics import prepare

    frame = make_frame(n)
    y, p = frame["finding"].to_numpy(), frame["prob_finding"].to_numpy()
    codes, n_patients = patient_codes(frame["patient_id"])
    task = BootstrapTask(prepare(y, p, 0.5), codes)
    t0 = time.perf_counter()
    bootstrap_metrics([task], n_patients, iterations, seed=0)
    vec = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    by_patient = pd.Series(np.arange(n)).groupby(codes).apply(np.asarray).to_list()
    t0 = time.perf_counter()
    for _ in range(naive_iterations):
        drawn = rng.integers(0, n_patients, n_patients)
        idx = np.concatenate([by_patient[d] for d in drawn])
        yy, pp = y[idx], p[idx]
        recall_score(yy, pp >= 0.5)
        roc_auc_score(yy, pp)
        average_precision_score(yy, pp)
    naive = (time.perf_counter() - t0) / naive_iterations * iterations
    print(f"predictions={n} patients={n_patients} iterations={iterations}")
    print(f"vectorised patient bootstrap, all 13 metrics + confusion counts: {vec:.2f} s")
    print(f"naive loop (sensitivity, AUROC, AP only; extrapolated from {naive_iterations}): {naive:.1f} s")
    print(f"speed-up: {naive / vec:.0f}x")


def _child(src: Path, n: int, iterations: int, with_files: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--iterations", str(iterations)]
    out = subprocess.run(
        [*cmd, *(["--files"] if with_files else [])], env=env, check=True, capture_output=True, text=True
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def against_baseline(ref: str, n: int, iterations: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        baseline_src = Path(tmp) / "src"
        for with_files in (False, True):
            times: dict[str, list[float]] = {"baseline": [], "current": []}
            for _ in range(repeats):  # alternate, so that load changes hit both alike
                times["baseline"].append(_child(baseline_src, n, iterations, with_files))
                times["current"].append(_child(ROOT / "src", n, iterations, with_files))
            base, cur = min(times["baseline"]), min(times["current"])
            what = "with the four output files" if with_files else "no files"
            print(
                f"evaluate_predictions, 1 class, overall + sex, age_band, view, sex x age_band ({what}), "
                f"best of {repeats}: baseline {ref} {base:.2f} s, current {cur:.2f} s, "
                f"ratio {cur / base:.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="predictions (scans)")
    parser.add_argument("--iterations", type=int, default=1000, help="bootstrap iterations")
    parser.add_argument(
        "--naive-iterations", type=int, default=30, help="naive loop iterations (extrapolated)"
    )
    parser.add_argument("--baseline-ref", default="c9248e1", help="git revision to compare with ('' to skip)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per version")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--files", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"seconds": time_full_evaluation(args.n, args.iterations, args.files)}))
        return
    bootstrap_versus_naive(args.n, args.iterations, args.naive_iterations)
    if args.baseline_ref:
        against_baseline(args.baseline_ref, args.n, args.iterations, args.repeats)
    else:
        print(
            f"evaluate_predictions (no files): {time_full_evaluation(args.n, args.iterations, False):.2f} s"
        )


if __name__ == "__main__":
    main()
