"""The patient bootstrap: nominal coverage in simulation, deterministic, and wider than an image bootstrap
when a patient's images are correlated."""

from __future__ import annotations

import numpy as np
import pytest

from xraytriage.evaluation.bootstrap import (
    BootstrapTask,
    bootstrap_metrics,
    patient_codes,
    percentile_interval,
)
from xraytriage.evaluation.metrics import prepare

TRUE_SENSITIVITY = 0.8  # mean of Beta(1.6, 0.4)


def _simulate(rng: np.random.Generator, n_pos_patients: int = 60, images: int = 4):
    """Positive patients with a per-patient detection probability q ~ Beta(1.6, 0.4) (strong clustering)."""
    q = rng.beta(1.6, 0.4, n_pos_patients)
    detected = rng.random((n_pos_patients, images)) < q[:, None]
    neg = 40 * images
    y = np.r_[np.ones(n_pos_patients * images), np.zeros(neg)]
    prob = np.r_[np.where(detected.ravel(), 0.9, 0.1), rng.random(neg) * 0.4]
    pid = np.r_[np.repeat(np.arange(n_pos_patients), images), 10_000 + np.repeat(np.arange(40), images)]
    return y, prob, pid


def _coverage(unit: str, sims: int, iterations: int) -> float:
    rng = np.random.default_rng(12345)
    hits = 0
    for s in range(sims):
        y, prob, pid = _simulate(rng)
        codes, n = patient_codes(pid) if unit == "patient" else (np.arange(y.size), y.size)
        reps = bootstrap_metrics([BootstrapTask(prepare(y, prob, 0.5), codes)], n, iterations, seed=s)[0]
        lo, hi = percentile_interval(reps["sensitivity"], 0.95)
        hits += lo <= TRUE_SENSITIVITY <= hi
    return hits / sims


def test_patient_bootstrap_covers_true_sensitivity_at_nominal_rate():
    coverage = _coverage("patient", sims=300, iterations=300)
    # 300 simulations: the standard error of a 95% coverage estimate is about 0.013
    assert 0.91 <= coverage <= 0.985, coverage


def test_image_bootstrap_undercovers_with_correlated_images():
    """Why we resample patients: resampling images pretends 4 correlated scans are 4 independent ones."""
    assert _coverage("image", sims=120, iterations=300) < 0.88


def test_bootstrap_is_deterministic_and_shared_across_tasks():
    rng = np.random.default_rng(0)
    y, prob, pid = _simulate(rng)
    codes, n = patient_codes(pid)
    task = BootstrapTask(prepare(y, prob, 0.5), codes)
    a = bootstrap_metrics([task, task], n, 200, seed=7)
    b = bootstrap_metrics([task], n, 200, seed=7)
    np.testing.assert_array_equal(a[0]["sensitivity"], b[0]["sensitivity"])
    np.testing.assert_array_equal(a[0]["auroc"], a[1]["auroc"])
    c = bootstrap_metrics([task], n, 200, seed=8)
    assert not np.array_equal(b[0]["sensitivity"], c[0]["sensitivity"])


def test_interval_withheld_when_most_replicates_undefined():
    reps = np.r_[np.full(80, np.nan), np.linspace(0, 1, 20)]
    assert percentile_interval(reps, 0.95) == (None, None)
    assert percentile_interval(np.linspace(0, 1, 101), 0.9) == pytest.approx((0.05, 0.95))
