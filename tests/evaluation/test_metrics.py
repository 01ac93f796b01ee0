"""binary_metrics and the weighted engine agree with scikit-learn, ties and one-class inputs included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from xraytriage.evaluation.calibration import expected_calibration_error
from xraytriage.evaluation.metrics import binary_metrics, prepare, weighted_metrics

# probabilities on a coarse grid so that ties (equal scores, scores equal to the threshold) are common
probs = st.integers(0, 10).map(lambda k: k / 10)
cases = st.lists(st.tuples(st.sampled_from([0.0, 1.0]), probs), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(cases, st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_binary_metrics_match_sklearn(rows, threshold):
    y = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows])
    m = binary_metrics(y, p, threshold)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["n"] == len(y) and m["positives"] == int(y.sum())
    if tp + fn:
        assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
        assert m["miss_rate"] == pytest.approx(1 - recall_score(y, pred))
    else:
        assert m["sensitivity"] is None and m["miss_rate"] is None
    if tn + fp:
        assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    else:
        assert m["specificity"] is None
    if tp + fp:
        assert m["ppv"] == pytest.approx(precision_score(y, pred))
    else:
        assert m["ppv"] is None
    if tn + fn:
        assert m["npv"] == pytest.approx(tn / (tn + fn))
    if 2 * tp + fp + fn:
        assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p, labels=[0, 1]))
    assert m["ece"] == pytest.approx(expected_calibration_error(y, p))
    if 0 < y.sum() < len(y):
        assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert m["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    else:
        assert m["auroc"] is None  # one class: undefined, not 0 or NaN


@settings(max_examples=100, deadline=None)
@given(cases, st.data())
def test_weighted_engine_equals_sklearn_sample_weight(rows, data):
    """The bootstrap's weighted sums are exact: integer weights == sklearn's sample_weight."""
    y = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows])
    w = np.array(data.draw(st.lists(st.integers(0, 4), min_size=len(rows), max_size=len(rows))), dtype=float)
    # two replicates at once (float32 path) and one alone (float64 path) must agree
    both = weighted_metrics(prepare(y, p, 0.5), np.vstack([w, np.ones_like(w)]))
    single = weighted_metrics(prepare(y, p, 0.5), w[None])
    pos, neg = (w * y).sum(), (w * (1 - y)).sum()
    for res in (both, single):
        if pos > 0 and neg > 0:
            assert res["auroc"][0] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-6)
            assert res["auprc"][0] == pytest.approx(average_precision_score(y, p, sample_weight=w), abs=1e-6)
        else:
            assert np.isnan(res["auroc"][0])
        if pos > 0:
            pred = p >= 0.5
            assert res["sensitivity"][0] == pytest.approx(recall_score(y, pred, sample_weight=w))


def test_uncertain_and_unknown_labels_are_excluded_and_counted():
    y = np.array([1, 0, -1, np.nan, 1, 0])
    p = np.array([0.9, 0.1, 0.8, 0.2, 0.4, 0.6])
    m = binary_metrics(y, p, 0.5)
    assert m["n"] == 4 and m["excluded"] == 2
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.5


def test_empty_input_gives_none_not_crash():
    m = binary_metrics(np.array([np.nan, -1.0]), np.array([0.3, 0.9]), 0.5)
    assert m["n"] == 0 and m["sensitivity"] is None and m["auroc"] is None and m["brier"] is None


def test_threshold_is_inclusive():
    m = binary_metrics(np.array([1.0, 0.0]), np.array([0.5, 0.49]), 0.5)
    assert m["tp"] == 1 and m["fp"] == 0


def test_known_mask_reads_truth_and_probability_as_numbers():
    """Truth given as text digits counts as its number; a probability missing as None (an object
    column, as JSON or a sparse table gives) is left out like NaN, not an error."""
    from xraytriage.evaluation.metrics import known_mask

    truth = np.array(["1", "0", "0.5", "1"])
    prob = np.array([0.2, 0.7, 0.4, None], dtype=object)
    assert known_mask(truth, prob).tolist() == [True, True, False, False]
    assert known_mask([1, 0, -1, 0], [0.3, float("inf"), 0.5, 0.0]).tolist() == [True, False, False, True]


def test_truth_and_probabilities_of_different_lengths_are_refused_with_both_sizes():
    with pytest.raises(ValueError, match=r"^y_true has 3 values but prob has 2$"):
        binary_metrics(np.array([1.0, 0.0, 1.0]), np.array([0.4, 0.6]), 0.5)


def test_ece_uses_the_bins_asked_for_and_the_threshold_is_reported():
    """ECE with 4 bins is not ECE with 10 (expected_calibration_error as the oracle)."""
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    p = np.array([0.9, 0.6, 0.35, 0.2, 0.55])
    four, ten = expected_calibration_error(y, p, 4), expected_calibration_error(y, p, 10)
    assert four != pytest.approx(ten)
    m = binary_metrics(y, p, 0.3, n_bins=4)
    assert m["ece"] == pytest.approx(four) and m["threshold"] == 0.3
    assert binary_metrics(y, p, 0.3)["ece"] == pytest.approx(ten)


def test_the_engine_reads_scores_as_float64_and_text_truth_as_numbers():
    """A network's float32 probabilities are thresholded and binned at their exact (float64) values, as
    the evaluation tables hold them: float32(0.7) is just below 0.7, so not flagged at 0.7 and in the
    0.6-0.7 bin; scores below 0 (a model that outputs no probability) go in the first bin, as in the
    reliability diagram; truth given as text digits counts as its number."""
    y = np.array([1.0, 0.0, 0.0, 0.0])
    p32 = np.array([0.7, 0.75, -0.5, 0.05], dtype=np.float32)
    p64 = p32.astype(np.float64)
    assert p64[0] < 0.7
    got = weighted_metrics(prepare(y, p32, 0.7), np.ones((1, 4)))
    assert (got["tp"][0], got["fp"][0], got["fn"][0]) == (0, 1, 1)
    assert got["ece"][0] == pytest.approx(expected_calibration_error(y, p64))
    text = weighted_metrics(prepare(np.array(["1", "0", "0", "1"]), p64, 0.5), np.ones((1, 4)))
    assert (text["positives"][0], text["fp"][0], text["tp"][0]) == (2, 1, 1)


def test_prepared_scores_hold_the_known_rows_sorted_by_descending_score_with_their_threshold():
    y = np.array([0.0, 1.0, 1.0, 0.0])
    p = np.array([0.2, 0.9, 0.2, 0.6])
    prep = prepare(y, p, 0.4)
    assert prep.prob.tolist() == [0.9, 0.6, 0.2, 0.2] and prep.threshold == 0.4
    assert p[prep.order].tolist() == prep.prob.tolist() and prep.y.tolist() == (y[prep.order] == 1).tolist()
    assert prep.starts.tolist() == [0, 1, 2] and prep.n == 4  # the first row of each distinct score


def test_undefined_figures_are_none_without_a_numpy_warning():
    """One class only, or nothing flagged: the figures without a denominator are None, and nothing is
    printed (binary_metrics runs every epoch; a RuntimeWarning there would be noise in every log)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(np.array([0.0, 0.0, 0.0]), np.array([0.1, 0.2, 0.3]), 0.5)
        empty = binary_metrics(np.array([np.nan]), np.array([0.5]), 0.5)
    assert m["sensitivity"] is None and m["ppv"] is None and m["auroc"] is None and m["auprc"] is None
    assert m["specificity"] == 1.0 and m["npv"] == 1.0 and m["f1"] is None
    assert empty["brier"] is None and empty["ece"] is None and empty["accuracy"] is None


def test_integer_weights_are_counts_like_float_ones():
    """Patient-draw counts given as integers weigh the squared errors exactly (sklearn's sample_weight)."""
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.9, 0.35, 0.4, 0.05])
    counts = np.array([[2, 1, 0, 3]])
    got = weighted_metrics(prepare(y, p, 0.5), counts)
    assert got["brier"][0] == pytest.approx(brier_score_loss(y, p, sample_weight=counts[0]))
    assert got["tp"][0] == 2 and got["tn"][0] == 4


def test_a_single_positive_scan_has_average_precision_one_and_no_auroc():
    m = binary_metrics(np.array([1.0]), np.array([0.7]), 0.5)
    assert m["auprc"] == average_precision_score([1], [0.7]) == 1.0 and m["auroc"] is None


def test_each_replicate_gets_its_own_figures_quietly_and_an_empty_population_gets_nan():
    """Two weightings at once (the bootstrap's float32 path): each row's ECE and AUPRC are those of the
    scans repeated as often as drawn (expected_calibration_error, scikit-learn); the best-scored scan
    drawn zero times raises no numpy warning; no scans at all give NaN (not None) per replicate."""
    import warnings

    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    p = np.array([0.95, 0.8, 0.45, 0.3, 0.12])
    w = np.array([[0, 2, 1, 1, 1], [3, 0, 1, 2, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = weighted_metrics(prepare(y, p, 0.5), w)
    for row in range(2):
        rep = np.repeat(np.arange(5), w[row])
        assert got["ece"][row] == pytest.approx(expected_calibration_error(y[rep], p[rep]))
        assert got["auprc"][row] == pytest.approx(average_precision_score(y[rep], p[rep]), abs=1e-6)
    empty = weighted_metrics(prepare(np.zeros(0), np.zeros(0), 0.5), np.ones((2, 0)))
    assert np.isnan(empty["auroc"]).all() and np.isnan(empty["auprc"]).all() and empty["auroc"].shape == (2,)
