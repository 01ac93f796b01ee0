"""The validated scope: which scans a model was validated on, and the check every scored scan gets.

``record`` builds it at the end of training (``collect`` reads the headers and features), ``check``
applies it at scoring time; ``ood`` is the image-based Mahalanobis reference. See docs/scoring.md.
"""

from xraytriage.scope.check import (
    ALWAYS_RULES,
    OOD_RULE,
    REASON_SEPARATOR,
    HeaderRule,
    PredicateRule,
    RangeRule,
    ScopeChecker,
    ScopeVerdict,
    ValueRule,
    reason_rules,
)
from xraytriage.scope.facts import ScanFacts
from xraytriage.scope.ood import MahalanobisReference, OodUnavailable
from xraytriage.scope.record import ValidatedScope, record_scope, validation_reference

__all__ = [
    "ALWAYS_RULES",
    "OOD_RULE",
    "REASON_SEPARATOR",
    "HeaderRule",
    "MahalanobisReference",
    "OodUnavailable",
    "PredicateRule",
    "RangeRule",
    "ScanFacts",
    "ScopeChecker",
    "ScopeVerdict",
    "ValidatedScope",
    "ValueRule",
    "reason_rules",
    "record_scope",
    "validation_reference",
]
