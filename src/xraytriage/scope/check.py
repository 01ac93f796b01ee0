"""Checking one scan against the validated scope: header rules, then the image-based OOD distance.

A reason is short, readable and parseable; the rule's name always comes first:

    view=LL not validated [AP, PA]          (a value rule)
    age 7 below validated 18-95             (a range rule, inclusive bounds)
    ood_score 912.3 above validated 688.1   (the image check)

Reasons of one scan are joined with ``"; "`` (:data:`REASON_SEPARATOR`); :func:`reason_rules` gives
back the rule names. A rule only applies to a scan that carries its attribute (PNG/JPEG carry none,
so they get the image check alone).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from xraytriage.io.presentation import BURNED_IN_TEXT, DERIVED_IMAGE, FOR_PROCESSING
from xraytriage.scope.facts import RANGE_RULES, VALUE_RULES, ScanFacts
from xraytriage.scope.record import ValidatedScope

REASON_SEPARATOR = "; "
OOD_RULE = "ood_score"
# The engines' features differ by ~1e-5 relative (ONNX Runtime vs PyTorch, BatchNorm folding): the
# validation scan that set the threshold must not turn out-of-distribution by rounding.
OOD_RELATIVE_TOLERANCE = 1e-4
_RULE_NAME = re.compile(r"^([a-z_]+)[= ]")


class HeaderRule(Protocol):
    """One check of a scan's header: ``reason(facts)`` is None when the scan passes it."""

    name: str

    def reason(self, facts: ScanFacts) -> str | None: ...


@dataclass(frozen=True)
class ValueRule:
    """The attribute must be one of the validated values (compared without case)."""

    name: str
    allowed: tuple[str, ...]

    def reason(self, facts: ScanFacts) -> str | None:
        value = getattr(facts, self.name)
        if value is None or str(value).casefold() in {a.casefold() for a in self.allowed}:
            return None
        return f"{self.name}={value} not validated [{', '.join(self.allowed)}]"


@dataclass(frozen=True)
class RangeRule:
    """The attribute must lie within the validated [low, high], bounds included."""

    name: str
    low: float
    high: float

    def reason(self, facts: ScanFacts) -> str | None:
        value = getattr(facts, self.name)
        if value is None or not math.isfinite(value):
            return None
        if value < self.low:
            return f"{self.name} {value:g} below validated {self.low:g}-{self.high:g}"
        if value > self.high:
            return f"{self.name} {value:g} above validated {self.low:g}-{self.high:g}"
        return None


@dataclass(frozen=True)
class PredicateRule:
    """A yes/no header property that puts a scan out of scope, e.g. a burned-in annotation:
    ``PredicateRule("burned_in_text", lambda f: f.burned_in_text, "burned-in text present")``."""

    name: str
    fails: Callable[[ScanFacts], bool | None]
    message: str

    def reason(self, facts: ScanFacts) -> str | None:
        return f"{self.name} {self.message}" if self.fails(facts) else None


# Rules every checker applies, whatever scope the bundle recorded: header properties that put any scan
# out of scope (e.g. a "for processing" image, a derived image, burned-in text). Add a rule here, with
# its attribute on ScanFacts (set in ScanFacts.from_meta), and score, evaluate and training's
# validation out-of-scope rate all apply it.
ALWAYS_RULES: tuple[HeaderRule, ...] = ()


def _states(code: str) -> Callable[[ScanFacts], bool]:
    return lambda facts: code in facts.not_original


# "Is this a diagnostic original?" (io.presentation; the DICOM sections are in docs/scoring.md). On by
# default for every bundle, old ones included; each is switched by its scope.reject_* key.
INPUT_RULES: dict[str, HeaderRule] = {
    FOR_PROCESSING: PredicateRule(
        FOR_PROCESSING,
        _states(FOR_PROCESSING),
        "(PresentationIntentType FOR PROCESSING: raw detector data, not for reading, PS3.3 C.8.11.1)",
    ),
    DERIVED_IMAGE: PredicateRule(
        DERIVED_IMAGE,
        _states(DERIVED_IMAGE),
        "(ImageType not ORIGINAL\\PRIMARY, or a Secondary Capture, PS3.3 C.7.6.1.1.2 and PS3.4 B.5)",
    ),
    BURNED_IN_TEXT: PredicateRule(
        BURNED_IN_TEXT,
        _states(BURNED_IN_TEXT),
        "(BurnedInAnnotation YES: text written into the pixels, PS3.3 C.7.6.1)",
    ),
}


@dataclass(frozen=True)
class ScopeVerdict:
    in_scope: bool
    reasons: tuple[str, ...]
    ood_score: float | None  # None: no image reference in the bundle, or the check is off

    @property
    def reason_text(self) -> str:
        return REASON_SEPARATOR.join(self.reasons)


def reason_rules(text: str) -> list[str]:
    """The rule names in a ``scope_reasons`` cell, in order (``""`` -> ``[]``)."""
    names = []
    for part in filter(None, (p.strip() for p in text.split(REASON_SEPARATOR.strip()))):
        match = _RULE_NAME.match(part)
        names.append(match.group(1) if match else part.split()[0])
    return names


class ScopeChecker:
    """Checks scans against one :class:`ValidatedScope`; build once per run, call per batch."""

    def __init__(self, scope: ValidatedScope, extra_rules: Sequence[HeaderRule] = ()) -> None:
        """``extra_rules`` apply after the recorded ones and :data:`ALWAYS_RULES`."""
        self.scope = scope
        order = {name: i for i, name in enumerate((*VALUE_RULES, *RANGE_RULES))}
        values = sorted(scope.values.items(), key=lambda kv: order.get(kv[0], len(order)))
        ranges = sorted(scope.ranges.items(), key=lambda kv: order.get(kv[0], len(order)))
        self.rules: list[HeaderRule] = [ValueRule(n, tuple(v)) for n, v in values]  # a fixed order
        self.rules += [RangeRule(n, lo, hi) for n, (lo, hi) in ranges]
        self.rules += [INPUT_RULES[code] for code in scope.input_rules if code in INPUT_RULES]
        self.rules += [*ALWAYS_RULES, *extra_rules]
        self.ood = scope.ood

    @property
    def ood_available(self) -> bool:
        return self.ood is not None

    def header_reasons(self, facts: ScanFacts) -> list[str]:
        return [r for r in (rule.reason(facts) for rule in self.rules) if r is not None]

    def ood_scores(self, features: torch.Tensor | np.ndarray | None, n: int) -> list[float | None]:
        """Distance of each scan's features (None for every scan without a reference or features)."""
        if self.ood is None or features is None:
            return [None] * n
        return [float(d) for d in self.ood.distances(features)]

    def ood_reason(self, score: float | None) -> str | None:
        if self.ood is None or score is None:
            return None
        if not math.isfinite(score) or score > self.ood.threshold * (1 + OOD_RELATIVE_TOLERANCE):
            return f"{OOD_RULE} {score:.2f} above validated {self.ood.threshold:.2f}"
        return None

    def check(self, facts: ScanFacts, ood_score: float | None = None) -> ScopeVerdict:
        reasons = self.header_reasons(facts)
        ood = self.ood_reason(ood_score)
        if ood is not None:
            reasons.append(ood)
        return ScopeVerdict(not reasons, tuple(reasons), ood_score)

    def check_batch(
        self, facts: Sequence[ScanFacts], features: torch.Tensor | np.ndarray | None
    ) -> list[ScopeVerdict]:
        scores = self.ood_scores(features, len(facts))
        return [self.check(f, s) for f, s in zip(facts, scores)]
