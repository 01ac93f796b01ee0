"""Choosing the operating point on validation data.

The threshold is chosen once, on the validation split, stored in the model bundle and applied
unchanged to test data and to scoring — so the sensitivity promised on validation can be checked on
test. A scan is predicted positive when ``prob >= threshold``.

Policies (``evaluation.operating_point.policy``):

* ``target_sensitivity`` — the *highest* threshold whose validation sensitivity is >= ``target``
  (fewest false positives that still keep the promised sensitivity). Needs positives only.
* ``target_specificity`` — the *lowest* threshold whose validation specificity is >= ``target``
  (highest sensitivity at that specificity). Needs negatives only. When the target can only be met
  above the highest observed score, the threshold is the next float above it (it may exceed 1.0).
* ``youden`` — maximises sensitivity + specificity - 1 over the observed scores (the highest such
  threshold on ties). Needs both classes.
* ``fixed`` — ``operating_point.threshold``.

Fallback: rows with truth -1 (uncertain) or NaN (unknown) are ignored; if what a policy needs is
missing (no positives for ``target_sensitivity``, no negatives for ``target_specificity``, either for
``youden``), the fixed ``operating_point.threshold`` (default 0.5) is returned and a warning is logged.
It never raises on degenerate data.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from xraytriage.config import OperatingPointConfig
from xraytriage.evaluation.metrics import known_mask

log = logging.getLogger(__name__)


def _fallback(cfg: OperatingPointConfig, why: str) -> float:
    log.warning(
        "operating point: %s; policy '%s' cannot be applied, using the fixed threshold %.4g "
        "(evaluation.operating_point.threshold)",
        why,
        cfg.policy,
        cfg.threshold,
    )
    return float(cfg.threshold)


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, cfg: OperatingPointConfig) -> float:
    """Threshold for one class under ``cfg.policy`` (see the module docstring for the fallback)."""
    if cfg.policy == "fixed":
        return float(cfg.threshold)
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    keep = known_mask(y, p)
    y, p = y[keep] == 1.0, p[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if cfg.policy == "target_sensitivity":
        if n_pos == 0:
            return _fallback(cfg, "no positive cases with known labels")
        pos_desc = np.sort(p[y])[::-1]
        k = max(1, math.ceil(cfg.target * n_pos - 1e-9))  # positives that must score >= threshold
        return float(pos_desc[k - 1])
    if cfg.policy == "target_specificity":
        if n_neg == 0:
            return _fallback(cfg, "no negative cases with known labels")
        neg_asc = np.sort(p[~y])
        m = max(1, math.ceil(cfg.target * n_neg - 1e-9))  # negatives that must score < threshold
        bound = neg_asc[m - 1]
        above = p[p > bound]
        if above.size:
            return float(above.min())
        # negatives at the very top: only a threshold just above them (possibly > 1.0) meets the target
        return float(np.nextafter(bound, np.inf))
    if cfg.policy == "youden":
        if n_pos == 0 or n_neg == 0:
            return _fallback(cfg, f"{n_pos} positive and {n_neg} negative cases with known labels")
        from sklearn.metrics import roc_curve

        fpr, tpr, thr = roc_curve(y.astype(int), p, drop_intermediate=False)
        j = tpr[1:] - fpr[1:]  # the first point is the "predict nothing" threshold (inf)
        return float(thr[1:][int(np.argmax(j))])
    raise ValueError(f"unknown operating-point policy '{cfg.policy}'")
