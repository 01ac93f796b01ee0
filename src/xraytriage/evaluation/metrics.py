"""Per-class binary metrics at an operating point, computed from (possibly weighted) sums.

One vectorised engine serves both the fast point estimates used every training epoch (all weights 1)
and the patient bootstrap (one row of weights per replicate: how often each image's patient was
drawn). Computing both with the same code keeps the point estimate and its interval consistent; the
tests check the engine against scikit-learn, ties included.

Conventions (documented in docs/evaluation.md):

* a scan is predicted positive when ``prob >= threshold``;
* truth 1 = positive, 0 = negative; -1 (uncertain) and NaN (unknown) rows are left out, as are rows
  whose probability is not finite (counted in ``excluded``);
* a metric whose denominator is zero (sensitivity without positives, AUROC with one class, ...) is
  ``None`` — never a bare 0 or NaN;
* ECE uses ``n_bins`` equal-width probability bins: ``sum_b |sum(y_b) - sum(p_b)| / n``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xraytriage.evaluation.results import json_number

DEFAULT_ECE_BINS = 10

#: Rates reported with a confidence interval, in report order.
RATE_METRICS = (
    "sensitivity",
    "miss_rate",
    "specificity",
    "fpr",
    "ppv",
    "npv",
    "f1",
    "accuracy",
    "prevalence",
    "auroc",
    "auprc",
    "brier",
    "ece",
)
#: Confusion-matrix counts (weighted sums under the bootstrap).
COUNT_METRICS = ("n", "positives", "negatives", "tp", "fp", "tn", "fn")


def known_mask(y_true: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Rows usable for a binary metric: truth exactly 0 or 1 and a finite probability."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(prob, dtype=float)
    return ((y == 0.0) | (y == 1.0)) & np.isfinite(p)


@dataclass
class PreparedScores:
    """Scores of one population, pre-sorted so any number of weightings can be evaluated fast."""

    y: np.ndarray  # bool, known rows only, sorted by descending probability
    prob: np.ndarray  # sorted descending
    threshold: float
    features: np.ndarray  # (n, k) per-row quantities summed by a matrix product (sorted order)
    order: np.ndarray  # indices of the caller's rows in sorted order
    starts: np.ndarray  # first index (in sorted order) of each distinct score
    n_bins: int

    @property
    def n(self) -> int:
        return int(self.y.size)


def prepare(
    y_true: np.ndarray, prob: np.ndarray, threshold: float, n_bins: int = DEFAULT_ECE_BINS
) -> PreparedScores:
    """Prepare *known* rows (see :func:`known_mask`; callers filter) for :func:`weighted_metrics`."""
    y = np.asarray(y_true, dtype=float) == 1.0
    p = np.asarray(prob, dtype=float)
    pred = p >= threshold
    yf = y.astype(float)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    onehot = np.zeros((p.size, n_bins))
    onehot[np.arange(p.size), bins] = 1.0
    # columns: tp, fn, fp, tn, squared error, then per bin: sum(y) - sum(p)
    features = np.column_stack(
        [
            (y & pred).astype(float),
            (y & ~pred).astype(float),
            (~y & pred).astype(float),
            (~y & ~pred).astype(float),
            (p - yf) ** 2,
            onehot * (yf - p)[:, None],
        ]
    )
    order = np.argsort(-p, kind="mergesort")
    features = features[order]
    y = y[order]
    p = p[order]
    sorted_p = p
    if sorted_p.size:
        starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    else:
        starts = np.zeros(0, dtype=int)
    return PreparedScores(y, p, float(threshold), features, order, starts, n_bins)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def weighted_metrics(prep: PreparedScores, weights: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics for each row of ``weights`` (shape (B, n), columns in the caller's row order)."""
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    return sorted_weighted_metrics(prep, w[:, prep.order])


def sorted_weighted_metrics(prep: PreparedScores, w: np.ndarray) -> dict[str, np.ndarray]:
    """As :func:`weighted_metrics`, with weight columns already in ``prep``'s sorted order (fast path)."""
    sums = (w @ prep.features.astype(w.dtype, copy=False)).astype(np.float64)
    tp, fn, fp, tn, sq = sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3], sums[:, 4]
    calib = sums[:, 5 : 5 + prep.n_bins]
    pos, neg = tp + fn, fp + tn
    n = pos + neg
    out: dict[str, np.ndarray] = {
        "n": n,
        "positives": pos,
        "negatives": neg,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": _div(tp, pos),
        "miss_rate": _div(fn, pos),
        "specificity": _div(tn, neg),
        "fpr": _div(fp, neg),
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "accuracy": _div(tp + tn, n),
        "prevalence": _div(pos, n),
        "brier": _div(sq, n),
        "ece": _div(np.abs(calib).sum(axis=1), n),
    }
    auroc, auprc = _ranking_metrics(prep, w, pos, neg)
    out["auroc"], out["auprc"] = auroc, auprc
    return out


def _ranking_metrics(
    prep: PreparedScores, w: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC (ties count one half) and average precision (scikit-learn's step definition).

    Many replicates are computed in float32 (exact for integer counts below 2**24, and halves memory
    traffic); a single weighting (point estimates) in float64.
    """
    if prep.n == 0:
        nan = np.full(w.shape[0], np.nan)
        return nan, nan.copy()
    dtype = np.float32 if w.shape[0] > 1 else np.float64
    ws = w.astype(dtype, copy=False)
    ys = prep.y.astype(dtype)
    pos_w = ws * ys
    if prep.starts.size == prep.n:  # all scores distinct: nothing to merge
        pos_g, all_g = pos_w, ws
    else:
        pos_g = np.add.reduceat(pos_w, prep.starts, axis=1)  # per distinct score, descending
        all_g = np.add.reduceat(ws, prep.starts, axis=1)
    neg_g = all_g - pos_g
    fp_cum = np.cumsum(neg_g, axis=1)
    # sum_g pos_g * (negatives strictly below g + half the tied negatives)
    auc_num = (pos_g * (neg[:, None].astype(dtype) - fp_cum + 0.5 * neg_g)).sum(axis=1, dtype=np.float64)
    auroc = _div(auc_num, pos * neg)
    tp_cum = np.cumsum(pos_g, axis=1)
    all_cum = tp_cum + fp_cum
    with np.errstate(invalid="ignore", divide="ignore"):
        ap_terms = np.where(pos_g > 0, pos_g * tp_cum / all_cum, 0.0)
    auprc = _div(ap_terms.sum(axis=1, dtype=np.float64), pos)
    return auroc, auprc


def binary_metrics(
    y_true: np.ndarray, prob: np.ndarray, threshold: float, *, n_bins: int = DEFAULT_ECE_BINS
) -> dict[str, float | None]:
    """Point estimates at ``threshold`` (no bootstrap; fast enough to call every epoch).

    Keys: ``n positives negatives tp fp tn fn excluded threshold`` (counts as ints) and the rates in
    :data:`RATE_METRICS`; ``None`` where a metric is undefined for this data.
    """
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    keep = known_mask(y, p)
    prep = prepare(y[keep], p[keep], threshold, n_bins)
    values = weighted_metrics(prep, np.ones((1, prep.n)))
    result: dict[str, float | None] = {}
    for name in COUNT_METRICS:
        result[name] = round(float(values[name][0]))
    result["excluded"] = int(y.size - keep.sum())
    result["threshold"] = float(threshold)
    for name in RATE_METRICS:
        result[name] = json_number(values[name][0])
    return result
