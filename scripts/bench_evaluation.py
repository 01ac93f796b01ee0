"""Benchmark the patient bootstrap: vectorised engine vs a naive per-replicate scikit-learn loop.

Usage: .venv/bin/python scripts/bench_evaluation.py [--n 10000] [--iterations 1000]
Prints seconds and the speed-up ratio measured in the same run (machine load makes absolute figures noisy).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="predictions (scans)")
    parser.add_argument("--iterations", type=int, default=1000, help="bootstrap iterations")
    parser.add_argument(
        "--naive-iterations", type=int, default=30, help="naive loop iterations (extrapolated)"
    )
    args = parser.parse_args()

    from sklearn.metrics import average_precision_score, recall_score, roc_auc_score

    from xraytriage.config import EvaluationConfig
    from xraytriage.evaluation.bootstrap import BootstrapTask, bootstrap_metrics, patient_codes
    from xraytriage.evaluation.metrics import prepare
    from xraytriage.evaluation.report import evaluate_predictions

    rng = np.random.default_rng(0)
    n = args.n
    pid = rng.integers(0, n // 2, n)
    y = (rng.random(n) < 0.3).astype(float)
    p = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    codes, n_patients = patient_codes(pid)
    task = BootstrapTask(prepare(y, p, 0.5), codes)

    t0 = time.perf_counter()
    bootstrap_metrics([task], n_patients, args.iterations, seed=0)
    vec = time.perf_counter() - t0

    # naive: resample patients, rebuild the image list, call scikit-learn per replicate
    by_patient = pd.Series(np.arange(n)).groupby(codes).apply(np.asarray).to_list()
    t0 = time.perf_counter()
    for _ in range(args.naive_iterations):
        drawn = rng.integers(0, n_patients, n_patients)
        idx = np.concatenate([by_patient[d] for d in drawn])
        yy, pp = y[idx], p[idx]
        recall_score(yy, pp >= 0.5)
        roc_auc_score(yy, pp)
        average_precision_score(yy, pp)
    naive = (time.perf_counter() - t0) / args.naive_iterations * args.iterations

    frame = pd.DataFrame(
        {
            "patient_id": pid.astype(str),
            "sex": rng.choice(["F", "M"], n),
            "age": rng.uniform(20, 90, n),
            "view": rng.choice(["PA", "AP"], n),
            "finding": y,
            "prob_finding": p,
        }
    )
    cfg = EvaluationConfig(bootstrap_iterations=args.iterations, intersections=[["sex", "age_band"]])
    t0 = time.perf_counter()
    evaluate_predictions(frame, ["finding"], {"finding": 0.5}, cfg, None)
    full = time.perf_counter() - t0

    print(f"predictions={n} patients={n_patients} iterations={args.iterations}")
    print(f"vectorised patient bootstrap, all 13 metrics + confusion counts: {vec:.2f} s")
    print(
        f"naive loop (sensitivity, AUROC, AP only; extrapolated from {args.naive_iterations}): {naive:.1f} s"
    )
    print(f"speed-up: {naive / vec:.0f}x")
    print(
        f"evaluate_predictions, 1 class, overall + sex, age_band, view, sex x age_band "
        f"(no files): {full:.2f} s"
    )


if __name__ == "__main__":
    main()
