"""Calibration: does a predicted 0.8 mean 80 %? Reliability curve, ECE and temperature scaling.

Temperature scaling divides each label's logit by its own scalar ``T`` fitted on validation
*logits* (not on probabilities, which saturate in float32) by minimising the negative
log-likelihood; it changes no ranking (AUROC is unchanged) but makes probabilities honest. The
fitted temperatures are stored in the model bundle (``Bundle.temperatures``) and applied at
inference. Thresholds are chosen *after* the temperatures are fixed, on the calibrated probabilities
inference will produce (the same threshold on calibrated probabilities selects different scans).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd

from xraytriage.evaluation.metrics import DEFAULT_ECE_BINS, known_mask

log = logging.getLogger(__name__)

_EPS = 1e-7


def logit(prob: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=float), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Recalibrate probabilities: ``sigmoid(logit(p) / T)``."""
    z = logit(prob) / float(temperature)
    return 1.0 / (1.0 + np.exp(-z))


def reliability_curve(y_true: np.ndarray, prob: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> pd.DataFrame:
    """Equal-width bins: ``bin_low, bin_high, count, mean_prob, observed_rate`` (empty bins: count 0)."""
    keep = known_mask(y_true, prob)
    y = np.asarray(y_true, dtype=float)[keep]
    p = np.asarray(prob, dtype=float)[keep]
    idx = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    psum = np.bincount(idx, weights=p, minlength=n_bins)
    ysum = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(count > 0, psum / np.maximum(count, 1), np.nan)
        observed = np.where(count > 0, ysum / np.maximum(count, 1), np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": count.astype(int),
            "mean_prob": mean_prob,
            "observed_rate": observed,
        }
    )


def expected_calibration_error(
    y_true: np.ndarray, prob: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> float | None:
    """ECE = sum over bins of (bin share) x |observed rate - mean probability|; None without data."""
    curve = reliability_curve(y_true, prob, n_bins)
    n = curve["count"].sum()
    if n == 0:
        return None
    used = curve[curve["count"] > 0]
    return float((used["count"] * (used["observed_rate"] - used["mean_prob"]).abs()).sum() / n)


def fit_temperatures(logits: np.ndarray, truth: np.ndarray) -> list[float]:
    """One temperature per column of ``logits`` (n, k), each fitted on its own label's column of
    ``truth`` (1/0; -1 and NaN ignored). A label with a single class keeps T = 1 (with a warning)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if z.ndim != 2 or z.shape != y.shape:
        raise ValueError(f"logits of shape {z.shape} but truth of shape {y.shape}")
    return [fit_temperature(z[:, j], y[:, j], kind="logits") for j in range(z.shape[1])]


def fit_temperature(
    logits_or_probs: np.ndarray,
    y: np.ndarray,
    *,
    kind: Literal["auto", "logits", "probs"] = "auto",
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """Fit the temperature ``T`` minimising validation NLL of ``sigmoid(logit / T)``.

    ``kind="auto"`` treats the input as probabilities when every value lies in [0, 1] (what the
    prediction tables hold) and as logits otherwise; pass ``kind`` explicitly when logits could all
    fall in [0, 1]. Rows with truth -1/NaN are ignored. Returns 1.0 (no change) with a warning when
    the labels hold a single class, because the likelihood then has no finite optimum.
    """
    from scipy.optimize import minimize_scalar

    values = np.asarray(logits_or_probs, dtype=float).ravel()
    truth = np.asarray(y, dtype=float).ravel()
    if values.shape != truth.shape:
        raise ValueError(f"{values.size} scores but {truth.size} labels")
    keep = known_mask(truth, values)
    values, truth = values[keep], truth[keep]
    if kind == "auto":
        kind = "probs" if values.size and values.min() >= 0.0 and values.max() <= 1.0 else "logits"
    z = logit(values) if kind == "probs" else values
    if truth.size == 0 or truth.min() == truth.max():
        log.warning("temperature scaling needs both classes in the validation labels; keeping T=1")
        return 1.0

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        # -[y log sigmoid(s) + (1-y) log(1-sigmoid(s))] = logaddexp(0, s) - y s
        return float(np.mean(np.logaddexp(0.0, s) - truth * s))

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))
