"""Data audit: who is in the data, how often each finding occurs, and whether splits leak patients.

Run by ``xraytriage audit`` and at the start of training. A patient whose scans appear in more than
one split (leakage) makes validation and test figures optimistic; it is reported as an error
(``AuditResult.has_leakage``). Summaries and printed messages carry counts only, never patient IDs;
the list of leaking patients is available in memory (``AuditResult.leakage``) so the CLI can write it
to a file for the user to fix their own manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.columns import PROB_PREFIX
from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.results import json_number
from xraytriage.evaluation.subgroups import group_keys, resolve_subgroups

ALL = "all"


@dataclass
class AuditResult:
    """Counts and prevalence per split and subgroup, missing attributes and patient leakage."""

    splits: pd.DataFrame  # one row per split (+ "all")
    subgroups: pd.DataFrame  # one row per split x attribute x group
    missing: pd.DataFrame  # one row per requested attribute
    leakage: dict[str, list[str]] = field(default_factory=dict)  # patient_id -> splits (contains IDs!)
    labels: list[str] = field(default_factory=list)

    @property
    def has_leakage(self) -> bool:
        return bool(self.leakage)

    def leakage_pairs(self) -> dict[str, int]:
        """``{"test/train": 12}``: number of patients shared by each pair of splits (no IDs)."""
        pairs: dict[str, int] = {}
        for splits in self.leakage.values():
            for a, b in combinations(sorted(splits), 2):
                key = f"{a}/{b}"
                pairs[key] = pairs.get(key, 0) + 1
        return dict(sorted(pairs.items()))

    @property
    def errors(self) -> list[str]:
        if not self.leakage:
            return []
        detail = ", ".join(f"{k}: {v}" for k, v in self.leakage_pairs().items())
        return [
            f"patient leakage: {len(self.leakage)} patient(s) have scans in more than one split ({detail}); "
            "assign every patient to exactly one split"
        ]

    def split_table(self) -> pd.DataFrame:
        """Scans and patients per split (columns ``split``, ``scans``, ``patients``)."""
        rows = [
            {
                "split": r["split"],
                "scans": r["n"],
                "patients": "n/a" if r["patients"] is None else r["patients"],
            }
            for r in _in_split_order(_records(self.splits))
        ]
        return pd.DataFrame(rows, columns=["split", "scans", "patients"])

    def prevalence_table(self) -> pd.DataFrame:
        """Label x split: ``positives/labelled (prevalence)``; uncertain and blank labels are not labelled."""
        records = _in_split_order(_records(self.splits))
        rows = []
        for label in self.labels:
            row: dict[str, Any] = {"label": label}
            for rec in records:
                pos, neg = rec[f"{label}_positives"], rec[f"{label}_negatives"]
                prevalence = rec[f"{label}_prevalence"]
                row[rec["split"]] = (
                    f"{pos}/{pos + neg} ({prevalence:.1%})" if prevalence is not None else "n/a"
                )
            rows.append(row)
        return pd.DataFrame(rows, columns=["label", *[r["split"] for r in records]])

    def unknown_table(self) -> pd.DataFrame:
        """Subgroup attribute x scans whose value is unknown (or why the attribute is unavailable)."""
        rows = []
        for rec in _records(self.missing):
            if rec["present"]:
                fraction = rec["unknown_fraction"]
                share = f"{fraction:.1%}" if fraction is not None else "n/a"
                rows.append(
                    {
                        "attribute": rec["attribute"],
                        "unknown": int(rec["unknown"]),
                        "share": share,
                        "note": "",
                    }
                )
            else:
                rows.append(
                    {"attribute": rec["attribute"], "unknown": "all", "share": "100%", "note": rec["note"]}
                )
        return pd.DataFrame(rows, columns=["attribute", "unknown", "share", "note"])

    def summary_lines(self) -> list[str]:
        """The audit as text tables (counts only, never an ID) for the CLI and the training log."""
        blocks = [
            ("scans and patients per split", self.split_table()),
            ("positives / labelled scans (prevalence) per label and split", self.prevalence_table()),
            ("scans with an unknown subgroup attribute", self.unknown_table()),
        ]
        lines: list[str] = []
        for title, table in blocks:
            if table.empty:
                continue
            lines.append(f"{title}:")
            lines.extend("  " + row.rstrip() for row in _left_aligned(table).splitlines())
        lines.extend(f"ERROR: {e}" for e in self.errors)
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary without any patient identifier."""
        return {
            "labels": list(self.labels),
            "splits": _records(self.splits),
            "subgroups": _records(self.subgroups),
            "missing_attributes": _records(self.missing),
            "leakage": {"patients": len(self.leakage), "pairs": self.leakage_pairs()},
            "errors": self.errors,
        }


def _in_split_order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """train, val, test first (the order a reader expects), then any other split, then ``all``."""
    first = {"train": 0, "val": 1, "test": 2}
    return sorted(records, key=lambda r: (r["split"] == ALL, first.get(r["split"], 3), r["split"]))


def _left_aligned(table: pd.DataFrame) -> str:
    """The table as text: names and notes left-aligned, counts and shares right-aligned."""
    cells = [[str(v) for v in table[column]] for column in table.columns]
    lines = []
    for row in range(-1, len(table)):
        parts = []
        for column, values in zip(table.columns, cells, strict=True):
            width = max(len(str(column)), *(len(v) for v in values))
            text = str(column) if row < 0 else values[row]
            is_text = not any(v[:1].isdigit() for v in values)
            parts.append(text.ljust(width) if is_text else text.rjust(width))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in frame.to_dict(orient="records"):
        clean = {}
        for k, v in rec.items():
            if isinstance(v, (np.integer,)):
                v = int(v)
            elif isinstance(v, (float, np.floating)):
                v = json_number(v)
            elif v is pd.NA:
                v = None
            clean[str(k)] = v
        out.append(clean)
    return out


def _label_counts(part: pd.DataFrame, labels: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "n": len(part),
        "patients": int(part["patient_id"].nunique()) if "patient_id" in part else None,
    }
    for label in labels:
        v = pd.to_numeric(part[label], errors="coerce")
        pos, neg = int((v == 1).sum()), int((v == 0).sum())
        row[f"{label}_positives"] = pos
        row[f"{label}_negatives"] = neg
        row[f"{label}_uncertain"] = int((v == -1).sum())
        row[f"{label}_unknown"] = int(v.isna().sum())
        row[f"{label}_prevalence"] = pos / (pos + neg) if pos + neg else None
    return row


def infer_labels(df: pd.DataFrame) -> list[str]:
    """Columns whose values are all in {1, 0, -1, blank}, other than known non-label columns."""
    skip = {"path", "patient_id", "study_id", "split", "sex", "age", "view", "site", "manufacturer"}
    labels = []
    for column in df.columns:
        if column in skip or str(column).startswith(PROB_PREFIX):
            continue
        values = pd.to_numeric(df[column], errors="coerce")
        numeric = df[column].notna().any() and values.notna().sum() == df[column].notna().sum()
        if numeric and values.dropna().isin([0.0, 1.0, -1.0]).all():
            labels.append(str(column))
    return labels


def audit_manifest(
    df: pd.DataFrame, labels: list[str] | None, cfg: EvaluationConfig | None = None
) -> AuditResult:
    """Audit a manifest (or prediction table); ``labels=None`` infers label columns."""
    from xraytriage.data.manifest import patient_leakage

    cfg = cfg or EvaluationConfig()
    labels = list(labels) if labels else infer_labels(df)
    missing_labels = [label for label in labels if label not in df.columns]
    if missing_labels:
        raise ValueError(f"label column(s) {', '.join(missing_labels)} not in the manifest")
    frame = df.copy()
    if "split" not in frame.columns:
        frame["split"] = ALL
    frame["split"] = frame["split"].astype("string").fillna("unassigned")
    split_names = sorted(frame["split"].unique())
    split_rows = [{"split": s, **_label_counts(frame[frame["split"] == s], labels)} for s in split_names]
    if len(split_names) > 1:
        split_rows.append({"split": ALL, **_label_counts(frame, labels)})

    attrs, specs = resolve_subgroups(frame, cfg)
    sub_rows: list[dict[str, Any]] = []
    missing_rows: list[dict[str, Any]] = []
    for spec in specs:
        if not spec.available:
            missing_rows.append(
                {
                    "attribute": spec.name,
                    "present": False,
                    "unknown": None,
                    "unknown_fraction": None,
                    "note": spec.reason,
                }
            )
            continue
        key = pd.Series(group_keys(attrs, spec.columns), index=frame.index)
        unknown = (attrs[spec.columns] == "unknown").any(axis=1)
        missing_rows.append(
            {
                "attribute": spec.name,
                "present": True,
                "unknown": int(unknown.sum()),
                "unknown_fraction": float(unknown.mean()) if len(unknown) else None,
                "note": "",
            }
        )
        for split in [*split_names, ALL] if len(split_names) > 1 else split_names:
            in_split = frame["split"] == split if split != ALL else pd.Series(True, index=frame.index)
            for group in sorted(key[in_split].unique()):
                part = frame[in_split & (key == group)]
                sub_rows.append(
                    {"split": split, "attribute": spec.name, "group": group, **_label_counts(part, labels)}
                )
    leakage = patient_leakage(df) if "split" in df.columns and "patient_id" in df.columns else {}
    return AuditResult(
        splits=pd.DataFrame(split_rows),
        subgroups=pd.DataFrame(sub_rows),
        missing=pd.DataFrame(
            missing_rows, columns=["attribute", "present", "unknown", "unknown_fraction", "note"]
        ),
        leakage=leakage,
        labels=labels,
    )
