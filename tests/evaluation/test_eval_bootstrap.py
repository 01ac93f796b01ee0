"""The patient bootstrap (F1, AUPRC, Brier, ECE): nominal coverage in simulation, deterministic, wider
than an image bootstrap when a patient's images are correlated, honest about unusable replicates; and
why rates no longer use it (zero-width intervals near 1)."""

from __future__ import annotations

import numpy as np
import pytest

from xraytriage.evaluation.bootstrap import (
    BootstrapTask,
    bootstrap_estimate,
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


def test_percentile_bootstrap_collapses_near_one_which_is_why_rates_use_wilson():
    """The finding this replaced: with true sensitivity 0.97 and 30 positive patients, the percentile
    patient bootstrap often gives a zero-width interval and covers far below 95 %."""
    from xraytriage.evaluation.simulation import simulate

    rng = np.random.default_rng(0)
    hits = zero = 0
    for s in range(100):
        sample = simulate(rng, 30, 30, 0.97)
        codes, n = patient_codes(sample.codes)
        task = BootstrapTask(prepare(sample.positive.astype(float), sample.prob, 0.5), codes)
        lo, hi = percentile_interval(bootstrap_metrics([task], n, 200, seed=s)[0]["sensitivity"], 0.95)
        hits += lo <= 0.97 <= hi
        zero += hi == lo
    assert hits <= 88 and zero >= 10  # seeded: 83 and 15 (the new interval: >= 90 and 0)


def test_bootstrap_estimate_says_what_the_replicates_allowed():
    some_undefined = np.r_[np.full(30, np.nan), np.linspace(0.2, 0.8, 70)]
    est = bootstrap_estimate(0.5, some_undefined, 0.9)
    assert est.method == "bootstrap_percentile" and est.ci_low < 0.5 < est.ci_high
    assert est.note == "30 of 100 replicates undefined (e.g. no positive case drawn) and left out"
    most_undefined = np.r_[np.full(60, np.nan), np.linspace(0.2, 0.8, 40)]
    est = bootstrap_estimate(0.5, most_undefined, 0.9)
    assert est.ci_low is None and est.note == "no interval: only 40 of 100 replicates defined"
    flat = bootstrap_estimate(1.0, np.ones(50), 0.95)
    assert flat.ci_low is None and flat.ci_high is None
    assert flat.note == "no interval: every replicate gives the same value"
    assert bootstrap_estimate(None, np.ones(5), 0.95).value is None
    exact = bootstrap_estimate(0.5, np.linspace(0, 1, 101), 0.9)
    assert (exact.ci_low, exact.ci_high, exact.note) == pytest.approx((0.05, 0.95, None))


def test_patient_codes_refuse_missing_identifiers():
    with pytest.raises(ValueError, match="missing for 2 of 4 rows"):
        patient_codes(["a", None, " ", "b"])
    codes, n = patient_codes([" a", "b", "a "])
    assert n == 2 and list(codes) == [0, 1, 0]


# ------------------------------------------- exact edges: every patient, every replicate, every rule


def _found_only_in(patient: int, n_patients: int, images_of_found: int = 1) -> BootstrapTask:
    """Positive scans, one per patient, found only in ``patient`` (which has ``images_of_found`` scans):
    a replicate's tp is then ``images_of_found`` times how often that patient was drawn."""
    pid = np.r_[np.arange(n_patients), np.full(images_of_found - 1, patient)]
    prob = np.where(pid == patient, 0.9, 0.1)
    codes, _ = patient_codes(pid)
    return BootstrapTask(prepare(np.ones(pid.size), prob, 0.5), codes)


def test_each_replicate_draws_as_many_patients_as_there_are_and_the_first_one_too():
    reps = bootstrap_metrics([_found_only_in(0, 3)], 3, 3000, seed=1)[0]
    assert reps["n"].shape == (3000,) and np.all(reps["n"] == 3)  # three patients per replicate
    assert reps["tp"].mean() == pytest.approx(1.0, abs=0.06)  # patient 0: drawn once per replicate on average
    assert reps["tp"].max() == 3 and reps["tp"].min() == 0
    single = bootstrap_metrics([_found_only_in(0, 1)], 1, 10, seed=1)[0]
    np.testing.assert_array_equal(single["sensitivity"], np.ones(10))  # one patient: always drawn


def test_weights_follow_each_scan_to_its_own_patient():
    """Patient 1 has two found scans (sorted first), patient 0 one missed scan: tp is always twice
    patient 1's draws and fn patient 0's, so tp / 2 + fn is the number of patients."""
    reps = bootstrap_metrics([_found_only_in(1, 2, images_of_found=2)], 2, 400, seed=3)[0]
    assert np.all(reps["tp"] % 2 == 0) and np.all(reps["tp"] / 2 + reps["fn"] == 2)
    assert set(np.unique(reps["fn"])) == {0, 1, 2}


@pytest.mark.parametrize("iterations", [1, 7, 9])
def test_exactly_the_configured_replicates_whatever_the_chunking(monkeypatch, iterations):
    task = _found_only_in(0, 5)
    whole = bootstrap_metrics([task], 5, iterations, seed=11)[0]["tp"]
    import xraytriage.evaluation.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "_MAX_CHUNK_CELLS", 15)  # 3 replicates x 5 patients per chunk
    chunked = bootstrap_metrics([task], 5, iterations, seed=11)[0]["tp"]
    assert whole.shape == chunked.shape == (iterations,)
    np.testing.assert_array_equal(whole, chunked)


def test_zero_iterations_no_patients_or_no_tasks_give_no_replicates():
    task = _found_only_in(0, 3)
    assert bootstrap_metrics([task, task], 3, 0, seed=0) == [{}, {}]
    assert bootstrap_metrics([task], 0, 100, seed=0) == [{}]
    assert bootstrap_metrics([], 3, 100, seed=0) == []
    for replicates in (None, np.array([])):
        est = bootstrap_estimate(0.4, replicates, 0.95)
        assert (est.value, est.ci_low, est.ci_high, est.method, est.note) == (
            0.4,
            None,
            None,
            "bootstrap_percentile",
            None,
        )


def test_half_usable_replicates_is_enough_and_one_fewer_is_not():
    half = np.r_[np.full(50, np.nan), np.linspace(0, 1, 50)]
    assert percentile_interval(half, 0.95) == pytest.approx(tuple(np.quantile(half[50:], [0.025, 0.975])))
    fewer = np.r_[np.full(51, np.nan), np.linspace(0, 1, 49)]
    assert percentile_interval(fewer, 0.95) == (None, None)
    assert percentile_interval(fewer, 0.95, min_valid_fraction=0.49) != (None, None)
    assert percentile_interval(np.array([0.2, 0.6]), 0.5) == pytest.approx((0.3, 0.5))  # two: enough
    assert percentile_interval(np.array([0.2]), 0.5) == (None, None)  # one value is no interval
    assert percentile_interval(np.array([0.2, np.inf, -np.inf, 0.6]), 0.5) == pytest.approx((0.3, 0.5))
    assert percentile_interval(np.linspace(0, 1, 101), 0.8) == pytest.approx((0.1, 0.9))
    assert percentile_interval(None, 0.95) == (None, None)
    est = bootstrap_estimate(0.5, fewer, 0.95)
    assert est.note == "no interval: only 49 of 100 replicates defined" and est.ci_high is None
    one_dropped = bootstrap_estimate(0.5, np.r_[np.nan, np.linspace(0, 1, 101)], 0.8)
    assert one_dropped.note == "1 of 102 replicates undefined (e.g. no positive case drawn) and left out"
    assert (one_dropped.ci_low, one_dropped.ci_high) == pytest.approx((0.1, 0.9))


def test_missing_identifiers_are_listed_by_row_up_to_five():
    with pytest.raises(ValueError) as info:
        patient_codes(["a", None, "", " ", None, "b", "", None])
    assert str(info.value) == (
        "patient_id is missing for 6 of 8 rows (rows 1, 2, 3, 4, 6, ...); give every scan its patient's "
        "identifier (a scan from an unknown patient can get its own unique identifier)"
    )
    with pytest.raises(ValueError, match=r"missing for 5 of 6 rows \(rows 0, 1, 2, 3, 4\); give"):
        patient_codes([None] * 5 + ["a"])  # exactly five: all listed, no ellipsis
    with pytest.raises(ValueError, match=r"missing for 1 of 2 rows \(rows 0\); give"):
        patient_codes([None, "a"])
    codes, n = patient_codes(["z", "y", "z", "x"])
    assert n == 3 and codes.dtype == np.int64 and list(codes) == [0, 1, 0, 2]
