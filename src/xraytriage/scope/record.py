"""The validated scope a bundle carries: the population the model was trained and validated on.

Recorded at the end of training from the manifest and the DICOM headers of the training and
validation scans (value sets and inclusive ranges), plus the Mahalanobis reference of the network's
features (``scope.ood``) and the validation reference ``monitor`` compares deployments with. Stored
in the bundle as plain containers and tensors (``Bundle.scope``), so it loads with weights_only=True.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.config import ScopeConfig
from xraytriage.io.presentation import BURNED_IN_TEXT, DERIVED_IMAGE, FOR_PROCESSING
from xraytriage.scope.facts import RANGE_RULES, VALUE_RULES, ScanFacts
from xraytriage.scope.ood import MahalanobisReference, threshold_at

SCOPE_FORMAT = 1
# The input rules (io.presentation) and the scope.* key that switches each: on unless a config says so
INPUT_RULE_KEYS = {
    FOR_PROCESSING: "reject_for_processing",
    DERIVED_IMAGE: "reject_derived_images",
    BURNED_IN_TEXT: "reject_burned_in_text",
}
# the scope.* config key of each rule
CONFIG_KEYS = {
    "modality": "modalities",
    "body_part": "body_parts",
    "view": "views",
    "sex": "sexes",
    "manufacturer": "manufacturers",
    "site": "sites",
    "photometric": "photometric",
    "age": "age",
    "pixel_spacing": "pixel_spacing",
    "rows": "rows",
    "columns": "columns",
}
# manifest columns that stand in for a header attribute the file does not carry (PNG training data)
MANIFEST_COLUMNS = {
    "view": "view",
    "sex": "sex",
    "age": "age",
    "manufacturer": "manufacturer",
    "site": "site",
}


@dataclass
class ValidatedScope:
    """Value sets and ranges per rule (a rule absent = not checked), the OOD reference (None = no
    image check) and the validation reference (see docs/scoring.md and the monitor)."""

    values: dict[str, list[str]] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    ood: MahalanobisReference | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    n_scans: int = 0
    input_rules: tuple[str, ...] = tuple(INPUT_RULE_KEYS)  # not-an-original rules that apply

    @property
    def recorded(self) -> bool:
        """False for a bundle written before scopes existed: only config rules can apply."""
        return bool(self.values or self.ranges or self.ood or self.validation)

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": SCOPE_FORMAT,
            "values": {k: list(v) for k, v in self.values.items()},
            "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()},
            "ood": self.ood.to_payload() if self.ood is not None else None,
            "validation": self.validation,
            "n_scans": int(self.n_scans),
            "input_rules": list(self.input_rules),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None) -> ValidatedScope:
        """The bundle's ``scope``; ``{}`` (a bundle from before scopes) gives an empty scope."""
        if not payload:
            return cls()
        ood = payload.get("ood")
        return cls(
            values={str(k): [str(x) for x in v] for k, v in payload.get("values", {}).items()},
            ranges={str(k): (float(v[0]), float(v[1])) for k, v in payload.get("ranges", {}).items()},
            ood=MahalanobisReference.from_payload(ood) if ood else None,
            validation=dict(payload.get("validation", {})),
            n_scans=int(payload.get("n_scans", 0)),
            input_rules=tuple(str(r) for r in payload.get("input_rules", INPUT_RULE_KEYS)),
        )

    def with_config(self, cfg: ScopeConfig, only_set: bool = True, tune_ood: bool = True) -> ValidatedScope:
        """This scope narrowed or widened by ``scope.*`` keys (``only_set``: only those the config
        file or overrides named, so scoring without a scope section keeps the bundle's scope;
        ``tune_ood``: also re-derive the OOD threshold from the validation distances)."""
        chosen = cfg.model_fields_set if only_set else set(type(cfg).model_fields)
        values, ranges = dict(self.values), dict(self.ranges)
        for rule, key in CONFIG_KEYS.items():
            setting = getattr(cfg, key)
            if key not in chosen or setting is None:
                continue
            target: dict[str, Any] = values if rule in VALUE_RULES else ranges
            target.pop(rule, None)
            if setting != "any":
                target[rule] = (
                    sorted(setting) if rule in VALUE_RULES else (float(setting[0]), float(setting[1]))
                )
        ood = self.ood
        if tune_ood and ood is not None and ({"ood_quantile", "ood_threshold", "ood"} & chosen):
            ood = _retuned(ood, cfg, self.validation.get("ood_scores", []))
        input_rules = tuple(
            rule
            for rule, key in INPUT_RULE_KEYS.items()
            if (getattr(cfg, key) if key in chosen else rule in self.input_rules)
        )
        return ValidatedScope(values, ranges, ood, self.validation, self.n_scans, input_rules)


def _retuned(
    ood: MahalanobisReference, cfg: ScopeConfig, validation_scores: Sequence[float]
) -> MahalanobisReference | None:
    if not cfg.ood:
        return None
    threshold = cfg.ood_threshold
    if threshold is None:
        threshold = threshold_at(np.asarray(validation_scores, float), cfg.ood_quantile)
    return MahalanobisReference(
        ood.mean, ood.precision, float(threshold), cfg.ood_quantile, ood.n_train, ood.shrinkage
    )


def population_values(frame: pd.DataFrame, facts: Sequence[ScanFacts | None]) -> list[ScanFacts]:
    """Each scan's attributes: the header's where the file carries the tag, else the manifest's."""
    out = []
    columns = {rule: col for rule, col in MANIFEST_COLUMNS.items() if col in frame.columns}
    records = frame[list(columns.values())].to_dict("records") if columns else [{}] * len(frame)
    for row, header in zip(records, facts):
        header = header or ScanFacts()
        update = {}
        for rule, col in columns.items():
            if getattr(header, rule) is None:
                update[rule] = _manifest_value(rule, row.get(col))
        out.append(ScanFacts(**{**header.__dict__, **update}))
    return out


def _manifest_value(rule: str, value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return None
    if rule == "age":
        number = float(value)
        return number if math.isfinite(number) else None
    text = " ".join(str(value).split())
    if rule == "sex":
        return text if text in ("F", "M") else None
    if not text or text.lower() == "unknown":
        return None
    return text.upper() if rule == "view" else text


def record_scope(
    population: Sequence[ScanFacts],
    cfg: ScopeConfig,
    ood: MahalanobisReference | None,
) -> ValidatedScope:
    """Value sets and ranges observed over ``population`` (training + validation scans), then the
    config's narrowing/widening; a rule with nothing observed is not recorded (cannot be checked).
    An input rule is dropped when training scans state it (e.g. RSNA Pneumonia's DICOMs are all
    Secondary Captures): the model was validated on such images."""
    stated = {code for f in population for code in f.not_original}
    kept = tuple(rule for rule in INPUT_RULE_KEYS if rule not in stated)
    scope = ValidatedScope(n_scans=len(population), ood=ood if cfg.ood else None, input_rules=kept)
    for rule in VALUE_RULES:
        seen = {getattr(f, rule) for f in population} - {None}
        if seen:
            scope.values[rule] = sorted(seen, key=str)
    for rule in RANGE_RULES:
        seen_numbers = [v for f in population if (v := getattr(f, rule)) is not None and math.isfinite(v)]
        if seen_numbers:
            scope.ranges[rule] = (float(min(seen_numbers)), float(max(seen_numbers)))
    return scope.with_config(cfg, only_set=True, tune_ood=False)


def validation_reference(
    probabilities: dict[str, Sequence[float]], ood_scores: Sequence[float], out_of_scope: Sequence[bool]
) -> dict[str, Any]:
    """``scope["validation"]`` exactly as the monitor reads it (docs/scoring.md)."""
    n = len(out_of_scope)
    return {
        "probabilities": {label: [float(p) for p in values] for label, values in probabilities.items()},
        "ood_scores": [float(s) for s in ood_scores],
        "out_of_scope_rate": float(sum(out_of_scope) / n) if n else 0.0,
        "n_scans": int(n),
    }
