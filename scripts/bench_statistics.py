"""Seeded clustered simulations: do the intervals cover, does the gate stay quiet on noise and find real
gaps, does the guaranteed operating point keep its promise?

Usage: .venv/bin/python scripts/bench_statistics.py [--sims 1000] [--gate-sims 400] [--policy-sims 1000]
       [--contrast-sims 200] [--seed 0]

Data (xraytriage.evaluation.simulation): every patient has 1-3 scans with within-patient correlation
0.5 on the latent score; ``n_pos`` is the number of positive patients (as many negative patients).
Prints one table per question; the goals are those of issue 14: coverage of every 95 % interval
between 0.93 and 0.98 where n_pos >= 30, no zero-width interval anywhere, gate false alarms <= 5 %,
the guaranteed policy reaching its target in >= 95 % of validation draws.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

N_POS = (10, 30, 100, 1000)
SENSITIVITIES = (0.80, 0.95, 0.99, 1.00)
METRICS = ("sensitivity", "specificity", "miss_rate", "auroc", "difference")


def bootstrap_coverage(patients: int, sensitivity: float, sims: int, seed: int) -> tuple[float, int]:
    """The percentile patient bootstrap the rates used before (contrast, same data design)."""
    from xraytriage.evaluation.bootstrap import BootstrapTask, bootstrap_metrics, percentile_interval
    from xraytriage.evaluation.metrics import prepare
    from xraytriage.evaluation.simulation import simulate

    rng = np.random.default_rng(seed)
    hits = zero = 0
    for s in range(sims):
        sample = simulate(rng, patients, patients, sensitivity)
        task = BootstrapTask(prepare(sample.positive.astype(float), sample.prob, 0.5), sample.codes)
        reps = bootstrap_metrics([task], 2 * patients, 500, seed=s)[0]["sensitivity"]
        lo, hi = percentile_interval(reps, 0.95)
        hits += lo <= sensitivity <= hi
        zero += hi <= lo
    return hits / sims, zero


def coverage_table(sims: int, contrast_sims: int, seed: int) -> None:
    from xraytriage.evaluation.simulation import coverage_cell

    print(f"\n## Coverage of 95 % intervals ({sims} simulations per row; zero-width intervals in brackets)\n")
    head = " | ".join(METRICS)
    print(f"| n_pos | true sensitivity | {head} | percentile bootstrap, sensitivity (before) |")
    print("|---:|---:|" + "---:|" * (len(METRICS) + 1))
    zero_total = 0
    for i, n_pos in enumerate(N_POS):
        for j, sens in enumerate(SENSITIVITIES):
            cells = coverage_cell(n_pos, sens, sims, seed=seed + 100 * i + j)
            zero_total += sum(c.zero_width for c in cells.values())
            row = " | ".join(f"{cells[m].rate:.3f} ({cells[m].zero_width})" for m in METRICS)
            contrast = "—"
            if contrast_sims:
                rate, zero = bootstrap_coverage(n_pos, sens, contrast_sims, seed + 100 * i + j)
                contrast = f"{rate:.3f} ({zero})"
            print(f"| {n_pos} | {sens:.2f} | {row} | {contrast} |")
    print(f"\nzero-width intervals, all rows and metrics: {zero_total}")


def gate_table(sims: int, seed: int) -> None:
    from xraytriage.evaluation.simulation import gate_verdicts

    print(f"\n## Fairness gate ({sims} simulations per row): share of verdicts\n")
    print(
        "| groups (positive patients) | true sensitivities | limit (max_miss_rate_gap) "
        "| fail | cannot certify | pass |"
    )
    print("|---|---|---:|---:|---:|---:|")
    rows = [
        ({"A": 300, "B": 150, "C": 60, "D": 25}, dict.fromkeys("ABCD", 0.85), 0.10),
        ({"F": 100, "M": 100}, {"F": 0.85, "M": 0.85}, 0.05),
        ({"F": 300, "M": 300}, {"F": 0.85, "M": 0.85}, 0.05),
        ({"F": 100, "M": 100}, {"F": 0.85, "M": 0.85}, 0.0),
        ({"F": 300, "M": 300}, {"F": 0.85, "M": 0.85}, 0.0),
        ({"F": 100, "M": 100}, {"F": 0.75, "M": 0.85}, 0.0),
        ({"F": 300, "M": 300}, {"F": 0.75, "M": 0.85}, 0.0),
        ({"F": 100, "M": 100}, {"F": 0.75, "M": 0.85}, 0.05),
        ({"F": 300, "M": 300}, {"F": 0.75, "M": 0.85}, 0.05),
        ({"F": 1000, "M": 1000}, {"F": 0.90, "M": 0.91}, 0.05),
    ]
    for k, (sizes, sens, limit) in enumerate(rows):
        shares = gate_verdicts(sizes, sens, limit, sims, seed=seed + k)
        groups = "/".join(str(v) for v in sizes.values())
        truth = "/".join(f"{v:.2f}" for v in sens.values())
        print(
            f"| {groups} | {truth} | {limit:.2f} | {shares['fail']:.3f} | {shares['cannot certify']:.3f} | "
            f"{shares['pass']:.3f} |"
        )


def policy_table(sims: int, seed: int) -> None:
    from xraytriage.evaluation.simulation import policy_success

    print(f"\n## Operating point, target sensitivity 0.90 ({sims} validation draws per row)\n")
    print(
        "| validation positive patients | lower_bound: target reached | lower_bound: fallback "
        "| point_estimate: target reached |"
    )
    print("|---:|---:|---:|---:|")
    for k, n_pos in enumerate((30, 100, 300, 1000)):
        bound = policy_success(n_pos, 0.9, "lower_bound", sims, seed=seed + k)
        point = policy_success(n_pos, 0.9, "point_estimate", sims, seed=seed + k)
        print(f"| {n_pos} | {bound['reached']:.3f} | {bound['fallback']:.3f} | {point['reached']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sims", type=int, default=1000, help="simulations per coverage row")
    parser.add_argument(
        "--contrast-sims", type=int, default=200, help="for the percentile-bootstrap column (0: skip)"
    )
    parser.add_argument("--gate-sims", type=int, default=400, help="simulations per gate row")
    parser.add_argument("--policy-sims", type=int, default=1000, help="validation draws per policy row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # fallbacks are counted in the table, not logged per draw
    started = time.perf_counter()
    coverage_table(args.sims, args.contrast_sims, args.seed)
    gate_table(args.gate_sims, args.seed + 10_000)
    policy_table(args.policy_sims, args.seed + 20_000)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
