"""Patient-level (cluster) bootstrap, vectorised.

Images of one patient are correlated, so resampling images would give intervals that are too narrow.
Each replicate draws as many *patients* as there are, with replacement; every image then carries its
patient's draw count as a weight, and all metrics are computed from weighted sums
(:func:`xraytriage.evaluation.metrics.weighted_metrics`) — one matrix product per chunk of replicates,
no Python loop over replicates.

The same replicates (same seed, same patient draws) are shared by every class and every subgroup of
one evaluation, so gaps between groups get intervals too, and a re-run gives identical figures.
It serves the figures without a closed-form interval (F1, AUPRC, Brier score, ECE): percentile
intervals; replicates in which a metric is undefined (for example no positive case drawn) are left
out *and counted in the estimate's note*, no interval is given when fewer than half are usable, and
none when every usable replicate is equal (an interval is never of zero width). Rates and AUROC have
closed-form cluster-adjusted intervals (:mod:`xraytriage.evaluation.intervals`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from xraytriage.evaluation.metrics import PreparedScores, sorted_weighted_metrics
from xraytriage.evaluation.results import Estimate

_MAX_CHUNK_CELLS = 4_000_000  # replicates x images per matrix: bounds memory to tens of MB


@dataclass
class BootstrapTask:
    """One population to resample: its prepared scores and the patient code of each of its rows."""

    prep: PreparedScores
    codes: np.ndarray  # int patient codes (0..n_patients-1), aligned with prep's rows


def patient_codes(patient_ids: Iterable[object]) -> tuple[np.ndarray, int]:
    """Map patient identifiers to 0..P-1 (identifiers themselves are never stored or logged).

    Missing or blank identifiers are refused: merged into one "patient" they would make one huge
    cluster and silently distort every interval.
    """
    import pandas as pd

    ids = pd.Series(list(patient_ids), dtype="string").str.strip()
    missing = ids.isna() | (ids == "")
    if missing.any():
        rows = ", ".join(str(i) for i in np.flatnonzero(missing.to_numpy())[:5])
        raise ValueError(
            f"patient_id is missing for {int(missing.sum())} of {len(ids)} rows (rows {rows}"
            f"{', ...' if missing.sum() > 5 else ''}); give every scan its patient's identifier "
            "(a scan from an unknown patient can get its own unique identifier)"
        )
    codes, uniques = pd.factorize(ids)
    return codes.astype(np.int64), len(uniques)


def _count_chunks(n_patients: int, iterations: int, seed: int, chunk: int) -> Iterable[np.ndarray]:
    rng = np.random.default_rng(seed)
    done = 0
    while done < iterations:
        b = min(chunk, iterations - done)
        draws = rng.integers(0, n_patients, size=(b, n_patients))
        offsets = (np.arange(b) * n_patients)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=b * n_patients)
        yield counts.reshape(b, n_patients).astype(np.float32)  # exact for counts < 2**24
        done += b


def bootstrap_metrics(
    tasks: Sequence[BootstrapTask], n_patients: int, iterations: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Per task, every metric's value in each of ``iterations`` patient-resampled replicates."""
    if iterations <= 0 or n_patients == 0 or not tasks:
        return [{} for _ in tasks]
    widest = max((t.prep.n for t in tasks), default=1)
    chunk = int(max(1, min(iterations, _MAX_CHUNK_CELLS // max(widest, n_patients, 1))))
    parts: list[dict[str, list[np.ndarray]]] = [{} for _ in tasks]
    for counts in _count_chunks(n_patients, iterations, seed, chunk):
        for task, acc in zip(tasks, parts):
            values = sorted_weighted_metrics(task.prep, counts[:, task.codes[task.prep.order]])
            for name, arr in values.items():
                acc.setdefault(name, []).append(arr)
    return [{name: np.concatenate(chunks) for name, chunks in acc.items()} for acc in parts]


def percentile_interval(
    replicates: np.ndarray | None, confidence: float, min_valid_fraction: float = 0.5
) -> tuple[float | None, float | None]:
    """Percentile interval of the finite replicates, or (None, None) when too few are usable."""
    if replicates is None or replicates.size == 0:
        return None, None
    finite = replicates[np.isfinite(replicates)]
    if finite.size < max(2, min_valid_fraction * replicates.size):
        return None, None
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_estimate(value: float | None, replicates: np.ndarray | None, confidence: float) -> Estimate:
    """Point estimate with its percentile interval and a note on what the replicates allowed."""
    if value is None or replicates is None or replicates.size == 0:
        return Estimate.of(value, method="bootstrap_percentile")
    usable = int(np.isfinite(replicates).sum())
    dropped = replicates.size - usable
    note = (
        f"{dropped} of {replicates.size} replicates undefined (e.g. no positive case drawn) and left out"
        if dropped
        else None
    )
    lo, hi = percentile_interval(replicates, confidence)
    if lo is None:
        note = f"no interval: only {usable} of {replicates.size} replicates defined"
    elif hi <= lo:
        lo = hi = None
        note = "no interval: every replicate gives the same value"
    return Estimate.of(value, lo, hi, method="bootstrap_percentile", note=note)
