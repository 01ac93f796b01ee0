"""Typed evaluation results, and the one place they become JSON or table rows.

``evaluate_predictions`` builds one :class:`EvaluationResult`; metrics.json (``to_json``),
subgroups.csv (``subgroup_records``), report.html, TensorBoard and the CLI summary all render it.
The shape follows fairlearn's ``MetricFrame``: an overall block per class, a row per group, and the
difference of each group to a reference group. Numbers that are undefined are ``None`` here
(:func:`json_number` is the only NaN -> None conversion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xraytriage.evaluation.audit import AuditResult
    from xraytriage.evaluation.intervals import ClusteredProportion
    from xraytriage.evaluation.thresholds import OperatingPoint

SCHEMA_NAME = "xraytriage.metrics"
SCHEMA_VERSION = 2

PASS = "pass"
FAIL = "fail"
CANNOT_CERTIFY = "cannot certify"
NO_LIMITS = "no limits"
_SEVERITY = {FAIL: 2, CANNOT_CERTIFY: 1, PASS: 0}


def json_number(value: Any) -> float | None:
    """NaN/inf/None -> None, numpy scalar -> float."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def worst_verdict(verdicts: list[str]) -> str:
    """fail beats cannot certify beats pass; no verdict at all is a pass."""
    return max(verdicts, key=_SEVERITY.__getitem__, default=PASS)


@dataclass(frozen=True)
class Estimate:
    """A figure with its interval and the name of the interval method (see ``INTERVAL_METHODS``)."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    method: str = "count"
    note: str | None = None

    @classmethod
    def of(
        cls,
        value: Any,
        ci_low: Any = None,
        ci_high: Any = None,
        method: str = "count",
        note: str | None = None,
    ) -> Estimate:
        value = json_number(value)
        if value is None:
            return cls(None, None, None, method, note)
        return cls(value, json_number(ci_low), json_number(ci_high), method, note)

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    def text(self, digits: int = 3) -> str:
        if self.value is None:
            return "undefined"
        out = f"{self.value:.{digits}f}"
        if self.has_interval:
            out += f" ({self.ci_low:.{digits}f}–{self.ci_high:.{digits}f})"
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "method": self.method,
        }
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Counts:
    n: int
    positives: int
    negatives: int
    tp: int
    fp: int
    tn: int
    fn: int
    excluded: int

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ReliabilityBin:
    bin_low: float
    bin_high: float
    count: int
    mean_prob: float | None
    observed_rate: float | None


@dataclass(frozen=True)
class Calibration:
    ece: float | None
    bins: int
    temperature: float
    reliability: list[ReliabilityBin]

    def to_json(self) -> dict[str, Any]:
        return {
            "ece": self.ece,
            "bins": self.bins,
            "temperature": self.temperature,
            "reliability": [dict(b.__dict__) for b in self.reliability],
        }


@dataclass(frozen=True)
class ValidationSummary:
    """Validation figures at the same threshold as the test figures."""

    n: int
    positives: int
    metrics: dict[str, Estimate]

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "positives": self.positives, **{k: v.to_json() for k, v in self.metrics.items()}}


@dataclass(frozen=True)
class TargetCheck:
    """Did the promise of a ``target_*`` policy hold on test?"""

    metric: str
    target: float
    validation: float | None
    validation_lower_bound: float | None
    test: Estimate

    @property
    def held(self) -> bool | None:
        return None if self.test.value is None else self.test.value >= self.target

    @property
    def held_at_ci_low(self) -> bool | None:
        return None if self.test.ci_low is None else self.test.ci_low >= self.target

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "target": self.target,
            "validation": self.validation,
            "validation_lower_bound": self.validation_lower_bound,
            "test": self.test.value,
            "test_ci_low": self.test.ci_low,
            "test_ci_high": self.test.ci_high,
            "held": self.held,
            "held_at_ci_low": self.held_at_ci_low,
        }


@dataclass(frozen=True)
class GateCheck:
    """One comparison of the fairness gate, decided on the bounds of its interval."""

    label: str
    attribute: str
    group: str
    kind: str  # "miss_rate_difference" (group - reference) or "miss_rate"
    estimate: Estimate
    limit: float
    confidence: float  # simultaneous level over the attribute's comparisons (Bonferroni)
    verdict: str
    reason: str
    reference: str | None = None

    def line(self) -> str:
        return f"{self.label} / {self.attribute} / {self.group}: {self.verdict.upper()}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "attribute": self.attribute,
            "group": self.group,
            "reference": self.reference,
            "kind": self.kind,
            "estimate": self.estimate.to_json(),
            "limit": self.limit,
            "confidence": self.confidence,
            "verdict": self.verdict,
            "reason": self.reason,
        }


@dataclass
class GroupRow:
    """One subgroup of one attribute: counts, metrics with intervals, gaps and its gate verdict."""

    attribute: str
    group: str
    status: str  # "ok" or "insufficient data: <what it lacks>"
    n: int
    patients: int
    positives: int
    negatives: int
    metrics: dict[str, Estimate] = field(default_factory=dict)
    unknown: bool = False  # an attribute value is missing ("unknown")
    compared: bool = True  # part of gaps, the reference comparison and the gate
    miss: ClusteredProportion | None = field(default=None, repr=False)  # the miss rate's counts
    sensitivity_diff_vs_overall: float | None = None
    miss_rate_diff_vs_overall: float | None = None
    miss_rate_gap_to_best: float | None = None
    miss_rate_ratio_to_best: float | None = None
    fpr_gap_to_best: float | None = None
    auroc_gap_to_best: float | None = None
    is_best: bool | None = None
    is_worst: bool | None = None
    is_reference: bool = False
    difference_vs_reference: Estimate | None = None
    verdict: str | None = None
    verdict_reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def prevalence(self) -> float | None:
        return self.positives / self.n if self.n else None

    def value(self, metric: str) -> float | None:
        est = self.metrics.get(metric)
        return None if est is None else est.value

    def record(self, label: str) -> dict[str, Any]:
        """One row of subgroups.csv."""
        from xraytriage.evaluation.subgroups import GROUP_METRICS

        row: dict[str, Any] = {
            "label": label,
            "attribute": self.attribute,
            "group": self.group,
            "status": self.status,
            "n": self.n,
            "patients": self.patients,
            "positives": self.positives,
            "negatives": self.negatives,
            "prevalence": self.prevalence,
        }
        for metric in GROUP_METRICS:
            est = self.metrics.get(metric, Estimate(None))
            row[metric], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = (
                est.value,
                est.ci_low,
                est.ci_high,
            )
        diff = self.difference_vs_reference or Estimate(None)
        row.update(
            interval_methods=_methods_text(self.metrics),
            sensitivity_diff_vs_overall=self.sensitivity_diff_vs_overall,
            miss_rate_diff_vs_overall=self.miss_rate_diff_vs_overall,
            miss_rate_gap_to_best=self.miss_rate_gap_to_best,
            miss_rate_ratio_to_best=self.miss_rate_ratio_to_best,
            fpr_gap_to_best=self.fpr_gap_to_best,
            auroc_gap_to_best=self.auroc_gap_to_best,
            is_best=self.is_best,
            is_worst=self.is_worst,
            compared=self.compared,
            is_reference=self.is_reference,
            miss_rate_diff_vs_reference=diff.value,
            miss_rate_diff_vs_reference_ci_low=diff.ci_low,
            miss_rate_diff_vs_reference_ci_high=diff.ci_high,
            verdict=self.verdict,
            verdict_reason=self.verdict_reason,
        )
        return row


def _methods_text(metrics: dict[str, Estimate]) -> str:
    methods = sorted({e.method for e in metrics.values() if e.value is not None})
    return "; ".join(methods)


@dataclass
class AttributeResult:
    """All groups of one attribute (or intersection) for one class, with gaps and gate checks."""

    name: str
    available: bool
    reason: str = ""
    groups: list[GroupRow] = field(default_factory=list)
    reference_group: str | None = None
    reference_rule: str = ""
    best_group: str | None = None
    worst_group: str | None = None
    worst_group_miss_rate: Estimate | None = None
    miss_rate_gap: float | None = None
    equalized_odds_difference: float | None = None
    auroc_gap: float | None = None
    worst_sensitivity_diff_vs_overall: float | None = None
    note: str | None = None
    checks: list[GateCheck] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def compared_groups(self) -> list[GroupRow]:
        return [g for g in self.groups if g.compared and g.ok]

    @property
    def verdict(self) -> str | None:
        """None when the gate has no limits; else fail / cannot certify / pass."""
        if not self.checks and not self.unchecked:
            return None
        return worst_verdict([c.verdict for c in self.checks] + [CANNOT_CERTIFY] * bool(self.unchecked))

    def to_json(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason}
        out: dict[str, Any] = {
            "available": True,
            "groups": len(self.groups),
            "groups_with_sufficient_data": sum(g.ok for g in self.groups),
            "groups_with_insufficient_data": [g.group for g in self.groups if not g.ok],
            "groups_not_compared": [g.group for g in self.groups if not g.compared],
            "reference_group": self.reference_group,
            "reference_rule": self.reference_rule,
            "best_group": self.best_group,
            "worst_group": self.worst_group,
            "worst_group_miss_rate": None
            if self.worst_group_miss_rate is None
            else self.worst_group_miss_rate.to_json(),
            "miss_rate_gap": {
                "value": self.miss_rate_gap,
                "note": "largest minus smallest group miss rate: biased upward (noise alone makes it "
                "positive); the gate uses the differences to the reference group",
            },
            "equal_opportunity_difference": self.miss_rate_gap,
            "equalized_odds_difference": self.equalized_odds_difference,
            "auroc_gap": self.auroc_gap,
            "worst_sensitivity_diff_vs_overall": self.worst_sensitivity_diff_vs_overall,
            "comparisons": [
                {
                    "group": g.group,
                    "reference": self.reference_group,
                    "miss_rate_difference": g.difference_vs_reference.to_json(),
                    "verdict": g.verdict,
                    "reason": g.verdict_reason,
                }
                for g in self.groups
                if g.difference_vs_reference is not None
            ],
            "verdict": self.verdict,
            "unchecked": list(self.unchecked),
        }
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class ClassResult:
    """Everything computed for one label."""

    label: str
    operating_point: OperatingPoint
    counts: Counts
    metrics: dict[str, Estimate]
    confusion: dict[str, Estimate]
    calibration: Calibration
    validation: ValidationSummary | None = None
    target_check: TargetCheck | None = None
    attributes: dict[str, AttributeResult] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.operating_point.threshold

    @property
    def threshold_source(self) -> str:
        op = self.operating_point
        rule = f", {op.rule}" if op.rule else ""
        text = op.source if op.policy == "given" else f"{op.source} ({op.policy}{rule})"
        return f"{text}; FALLBACK: {op.fallback_reason}" if op.fallback else text

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "operating_point": self.operating_point.to_json(),
            "counts": self.counts.to_json(),
            "metrics": {k: v.to_json() for k, v in self.metrics.items()},
            "confusion_matrix": {k: v.to_json() for k, v in self.confusion.items()},
            "validation": None if self.validation is None else self.validation.to_json(),
            "target_check": None if self.target_check is None else self.target_check.to_json(),
            "calibration": self.calibration.to_json(),
            "subgroups": {name: a.to_json() for name, a in self.attributes.items()},
        }


@dataclass
class GateResult:
    """The fairness gate over every class and attribute."""

    limits: dict[str, Any]
    checks: list[GateCheck] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    confidence: float = 0.95

    @property
    def has_limits(self) -> bool:
        return any(v is not None for k, v in self.limits.items() if k.startswith("max_"))

    @property
    def verdict(self) -> str:
        if not self.has_limits:
            return NO_LIMITS
        return worst_verdict([c.verdict for c in self.checks] + [CANNOT_CERTIFY] * bool(self.unchecked))

    @property
    def passed(self) -> bool:
        return self.verdict in (PASS, NO_LIMITS)

    @property
    def failures(self) -> list[str]:
        return [c.line() for c in self.checks if c.verdict == FAIL]

    @property
    def uncertain(self) -> list[str]:
        return [c.line() for c in self.checks if c.verdict == CANNOT_CERTIFY]

    def to_json(self) -> dict[str, Any]:
        return {
            "limits": self.limits,
            "verdict": self.verdict,
            "passed": self.passed,
            "failures": self.failures,
            "cannot_certify": self.uncertain,
            "unchecked": list(self.unchecked),
            "confidence": self.confidence,
            "multiplicity": "Bonferroni over the comparisons of each attribute",
            "checks": [c.to_json() for c in self.checks],
        }


@dataclass(frozen=True)
class Leakage:
    """Patients found in more than one split; evaluation goes on only when explicitly allowed."""

    patients: int
    pairs: dict[str, int]

    @property
    def warning(self) -> str:
        detail = ", ".join(f"{k}: {v}" for k, v in self.pairs.items())
        return (
            f"PATIENT LEAKAGE ALLOWED (--allow-leakage): {self.patients} patient(s) appear in more than one "
            f"split ({detail}); every figure here may be optimistic"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed": True,
            "patients": self.patients,
            "pairs": dict(self.pairs),
            "warning": self.warning,
        }


@dataclass(frozen=True)
class Population:
    scans: int
    patients: int
    splits: dict[str, int]
    validation_scans: int | None
    skipped_unreadable: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EvaluationResult:
    """What ``evaluate_predictions`` computed; ``gate.verdict`` is the fairness decision."""

    classes: dict[str, ClassResult]
    gate: GateResult
    population: Population
    settings: dict[str, Any]  # bootstrap, operating_point, prediction rule, min_group_size (as JSON)
    model_id: str = ""
    created_utc: str = ""
    version: str = ""
    audit: AuditResult | None = None
    leakage: Leakage | None = None
    timing_seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.classes)

    @property
    def passed(self) -> bool:
        return self.gate.passed

    @property
    def gate_failures(self) -> list[str]:
        return self.gate.failures

    @property
    def confidence(self) -> float:
        return float(self.settings["bootstrap"]["confidence"])

    def subgroup_records(self) -> list[dict[str, Any]]:
        """subgroups.csv: one row per class x attribute x group (one row with the reason for an
        unavailable attribute)."""
        rows: list[dict[str, Any]] = []
        for label, block in self.classes.items():
            for attr in block.attributes.values():
                if not attr.available:
                    rows.append(
                        {
                            "label": label,
                            "attribute": attr.name,
                            "group": "",
                            "status": f"unavailable: {attr.reason}",
                        }
                    )
                    continue
                rows.extend(g.record(label) for g in attr.groups)
        if self.leakage is not None:
            for row in rows:
                row["leakage_warning"] = self.leakage.warning
        return rows

    def to_json(self) -> dict[str, Any]:
        from xraytriage.evaluation.intervals import INTERVAL_METHODS

        temperatures = {label: c.calibration.temperature for label, c in self.classes.items()}
        out: dict[str, Any] = {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "created_utc": self.created_utc,
            "xraytriage_version": self.version,
            "model_id": self.model_id,
            "temperatures": temperatures,
            "labels": self.labels,
            "population": self.population.to_json(),
            **self.settings,
            "interval_methods": INTERVAL_METHODS,
            "classes": {label: c.to_json() for label, c in self.classes.items()},
            "fairness_gate": self.gate.to_json(),
            "audit": None if self.audit is None else self.audit.to_dict(),
            "leakage": None if self.leakage is None else self.leakage.to_json(),
            "timing_seconds": dict(self.timing_seconds),
        }
        return out
