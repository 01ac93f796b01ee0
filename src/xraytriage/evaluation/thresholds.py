"""Choosing the operating point on validation data, and saying how sure the choice is.

The threshold is chosen once, on the validation split, stored in the model bundle with the record of
how it was chosen (:class:`OperatingPoint`) and applied unchanged to test data and to scoring — so the
sensitivity promised on validation can be checked on test. A scan is predicted positive when
``prob >= threshold``.

Policies (``evaluation.operating_point.policy``):

* ``target_sensitivity`` — with ``rule: lower_bound`` (default) the *highest* threshold whose
  one-sided lower confidence bound (``confidence``, default 95 %) on validation sensitivity reaches
  ``target``: the true sensitivity is then at least the target in at least 95 % of validation sets.
  With ``rule: point_estimate`` the highest threshold whose validation sensitivity itself reaches the
  target (about half of the time the true sensitivity is below it). Needs positives only.
* ``target_specificity`` — the same for specificity: the *lowest* threshold whose (bound on)
  validation specificity reaches ``target``. When that needs a threshold above the highest observed
  score, the next float above it is used (it may exceed 1.0). Needs negatives only.
* ``youden`` — maximises sensitivity + specificity - 1 over the observed scores (the highest such
  threshold on ties). Needs both classes.
* ``fixed`` — ``operating_point.threshold``.

The bound accounts for several scans per patient (see :mod:`xraytriage.evaluation.intervals`).

Fallbacks are recorded, never silent: without what a policy needs (no positives for
``target_sensitivity``, ...) the fixed ``operating_point.threshold`` is used; when the lower bound
cannot reach the target even with every validation positive flagged (too few positives), the
threshold that flags every validation positive (the highest bound there is) is used. Either way
:attr:`OperatingPoint.fallback_reason` says why, a warning is logged, and every output shows it.
Rows with truth -1 (uncertain) or NaN (unknown) are ignored. It never raises on degenerate data.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xraytriage.config import OperatingPointConfig
from xraytriage.evaluation.intervals import lower_bounds_in_order
from xraytriage.evaluation.metrics import known_mask

log = logging.getLogger(__name__)

_TARGET_METRIC = {"target_sensitivity": "sensitivity", "target_specificity": "specificity"}


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold of one class and how it was chosen (stored in the bundle, shown in every output).

    ``lower_bound`` is the one-sided lower confidence bound (level ``confidence``) of the validation
    ``metric`` at the threshold; ``fallback_reason`` is set when the policy could not be applied.
    ``source`` says where the evaluation took it from: ``validation``, ``bundle``, ``command line``
    or ``config``.
    """

    threshold: float
    policy: str
    rule: str | None = None
    target: float | None = None
    confidence: float | None = None
    validation_value: float | None = None
    lower_bound: float | None = None
    validation_cases: int | None = None
    validation_patients: int | None = None
    fallback_reason: str | None = None
    source: str = "validation"

    @property
    def fallback(self) -> bool:
        return self.fallback_reason is not None

    @property
    def metric(self) -> str | None:
        """The validation figure the policy targets (``sensitivity`` / ``specificity``), if any."""
        return _TARGET_METRIC.get(self.policy)

    @property
    def guaranteed(self) -> bool | None:
        """Whether the lower bound reaches the target (None for policies without a target)."""
        if self.target is None or self.lower_bound is None:
            return None
        return self.lower_bound >= self.target - 1e-12

    def describe(self) -> str:
        """One line for the console and the report."""
        head = f"threshold {self.threshold:.4g} ({self.source}"
        if self.policy != "given":
            head += f": {self.policy}" + (f", rule {self.rule}" if self.rule else "")
        head += ")"
        if self.fallback_reason:
            return f"{head}; FALLBACK: {self.fallback_reason}"
        if self.metric and self.validation_value is not None:
            head += (
                f"; validation {self.metric} {self.validation_value:.3f} on {self.validation_cases} scans "
                f"from {self.validation_patients} patients"
            )
            if self.lower_bound is not None:
                head += (
                    f", one-sided {self.confidence * 100:g}% lower bound {self.lower_bound:.3f} "
                    f"({'reaches' if self.guaranteed else 'below'} the target {self.target:g})"
                )
        return head

    def with_source(self, source: str) -> OperatingPoint:
        return dataclasses.replace(self, source=source)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fallback"] = self.fallback
        out["metric"] = self.metric
        out["guaranteed"] = self.guaranteed
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OperatingPoint:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def given(cls, threshold: float, source: str) -> OperatingPoint:
        """A threshold given by the user (or an older bundle) without a record of its choice."""
        return cls(threshold=float(threshold), policy="given", source=source)


def _patient_codes(patient_ids: np.ndarray | None, n: int) -> np.ndarray:
    if patient_ids is None:
        return np.arange(n, dtype=np.int64)
    from xraytriage.evaluation.bootstrap import patient_codes

    codes, _ = patient_codes(patient_ids)
    return codes


def choose_operating_point(
    y_true: np.ndarray,
    prob: np.ndarray,
    cfg: OperatingPointConfig,
    patient_ids: np.ndarray | None,
) -> OperatingPoint:
    """The operating point of one class under ``cfg`` (see the module docstring).

    ``patient_ids`` (one per row; missing values are refused) let the bound account for several scans
    per patient; ``None`` declares every scan a different patient.
    """
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    if cfg.policy == "fixed":
        return OperatingPoint(threshold=float(cfg.threshold), policy="fixed")
    codes = _patient_codes(None if patient_ids is None else np.asarray(patient_ids, dtype=object), y.size)
    if codes.shape != y.shape:
        raise ValueError(f"y_true has {y.size} values but patient_ids has {codes.size}")
    keep = known_mask(y, p)
    positive, p, codes = y[keep] == 1.0, p[keep], codes[keep]
    if cfg.policy == "target_sensitivity":
        return _target_sensitivity(p[positive], codes[positive], cfg)
    if cfg.policy == "target_specificity":
        return _target_specificity(p, positive, codes, cfg)
    if cfg.policy == "youden":
        return _youden(p, positive, cfg)
    raise ValueError(f"unknown operating-point policy '{cfg.policy}'")


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, cfg: OperatingPointConfig) -> float:
    """Threshold only, every scan treated as its own patient (per-epoch logging, tuning)."""
    return choose_operating_point(y_true, prob, cfg, None).threshold


def _fallback(cfg: OperatingPointConfig, why: str, **found: Any) -> OperatingPoint:
    log.warning(
        "operating point: %s; policy '%s' cannot be applied, using the fixed threshold %.4g "
        "(evaluation.operating_point.threshold)",
        why,
        cfg.policy,
        cfg.threshold,
    )
    reason = f"{why}; fixed threshold {cfg.threshold:g} (evaluation.operating_point.threshold) used instead"
    return policy_point(cfg, float(cfg.threshold), fallback_reason=reason, **found)


def policy_point(cfg: OperatingPointConfig, threshold: float, **fields: Any) -> OperatingPoint:
    """The operating point ``threshold`` under ``cfg``'s policy, with the policy's target, rule and
    level recorded when it has a target (so the test set is checked against it, fallback or not)."""
    targeted = cfg.policy in _TARGET_METRIC
    return OperatingPoint(
        threshold=float(threshold),
        policy=cfg.policy,
        rule=cfg.rule if targeted else None,
        target=cfg.target if targeted else None,
        confidence=cfg.confidence if targeted else None,
        **fields,
    )


def _tie_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Index of the last element of every run of equal values (a threshold cannot split ties)."""
    return np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])


def _first_reaching(ends: np.ndarray, bounds: np.ndarray, n: int, cfg: OperatingPointConfig) -> int | None:
    """Index of the smallest count (at a tie end) whose bound (rule lower_bound) or share reaches
    the target; None when none does."""
    if cfg.rule == "point_estimate":
        reached = (ends + 1) >= math.ceil(cfg.target * n - 1e-9)
    else:
        reached = bounds[ends] >= cfg.target
    hit = np.flatnonzero(reached)
    return int(ends[hit[0]]) if hit.size else None


def _target_sensitivity(pos: np.ndarray, codes: np.ndarray, cfg: OperatingPointConfig) -> OperatingPoint:
    if pos.size == 0:
        return _fallback(cfg, "no positive validation case with a known label")
    order = np.argsort(-pos, kind="stable")
    pos_desc, codes_desc = pos[order], codes[order]
    bounds = lower_bounds_in_order(codes_desc, cfg.confidence)
    ends = _tie_ends(pos_desc)
    found = dict(validation_cases=int(pos.size), validation_patients=int(np.unique(codes).size))
    index = _first_reaching(ends, bounds, pos.size, cfg)
    reason = None
    if index is None:  # only possible for rule lower_bound: too few positives for the guarantee
        index = int(ends[-1])
        reason = (
            f"the one-sided {cfg.confidence * 100:g}% lower bound on validation sensitivity cannot reach "
            f"{cfg.target:g} with {pos.size} positive scans from {found['validation_patients']} patients "
            f"(best {bounds[index]:.3f}, with every validation positive flagged); threshold at the "
            "lowest positive score used instead"
        )
        log.warning("operating point: %s", reason)
    return policy_point(
        cfg,
        float(pos_desc[index]),
        validation_value=(index + 1) / pos.size,
        lower_bound=float(bounds[index]),
        fallback_reason=reason,
        **found,
    )


def _target_specificity(
    p: np.ndarray, positive: np.ndarray, codes: np.ndarray, cfg: OperatingPointConfig
) -> OperatingPoint:
    neg = p[~positive]
    if neg.size == 0:
        return _fallback(cfg, "no negative validation case with a known label")
    order = np.argsort(neg, kind="stable")
    neg_asc = neg[order]
    bounds = lower_bounds_in_order(codes[~positive][order], cfg.confidence)
    ends = _tie_ends(neg_asc)
    found = dict(validation_cases=int(neg.size), validation_patients=int(np.unique(codes[~positive]).size))
    index = _first_reaching(ends, bounds, neg.size, cfg)
    reason = None
    if index is None:
        index = int(ends[-1])
        reason = (
            f"the one-sided {cfg.confidence * 100:g}% lower bound on validation specificity cannot reach "
            f"{cfg.target:g} with {neg.size} negative scans from {found['validation_patients']} patients "
            f"(best {bounds[index]:.3f}, with every validation negative below the threshold); threshold "
            "just above the highest negative score used instead"
        )
        log.warning("operating point: %s", reason)
    bound = neg_asc[index]
    above = p[p > bound]
    # negatives at the very top: only a threshold just above them (possibly > 1.0) meets the target
    threshold = float(above.min()) if above.size else float(np.nextafter(bound, np.inf))
    return policy_point(
        cfg,
        threshold,
        validation_value=(index + 1) / neg.size,
        lower_bound=float(bounds[index]),
        fallback_reason=reason,
        **found,
    )


def _youden(p: np.ndarray, positive: np.ndarray, cfg: OperatingPointConfig) -> OperatingPoint:
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return _fallback(cfg, f"{n_pos} positive and {n_neg} negative validation cases with known labels")
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(positive.astype(int), p, drop_intermediate=False)
    j = tpr[1:] - fpr[1:]  # the first point is the "predict nothing" threshold (inf)
    return policy_point(cfg, float(thr[1:][int(np.argmax(j))]))
