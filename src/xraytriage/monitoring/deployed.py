"""Deployed scores as ``monitor`` reads them: many ``scores.csv`` (a week of nightly folders), one row per
scan, and the columns older files lack reported as unavailable instead of failing the run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.columns import IN_SCOPE, OOD_SCORE, STUDY_DATE, prob_column
from xraytriage.utils.errors import InputRefused

UNKNOWN = "unknown"
SCOPE_COLUMNS = (IN_SCOPE, OOD_SCORE, STUDY_DATE)
GROUP_FALLBACK_NOTE = "column '{column}' absent from {files}: its groups are 'unknown'"


class ScoresRefused(InputRefused):
    """A scores file that cannot be monitored against this bundle (wrong model, no probabilities)."""


@dataclass
class DeployedScores:
    """One row per scan: ``prob_<label>``, ``in_scope`` (bool, NA when unknown), ``ood_score`` (NaN when
    unknown), ``study_date`` (str, '' when unknown) and the group columns; plus what was unavailable."""

    table: pd.DataFrame
    files: list[str]
    rows_read: int
    duplicates_dropped: int
    has_in_scope: bool
    has_ood: bool
    warnings: list[str] = field(default_factory=list)


def _read_one(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path).astype("string").fillna("")
    return pd.read_csv(
        path, dtype=str, keep_default_na=False, encoding_errors="surrogateescape", on_bad_lines="skip"
    )


def _check_file(frame: pd.DataFrame, path: Path, labels: Sequence[str], model_id: str) -> None:
    missing = [prob_column(label) for label in labels if prob_column(label) not in frame.columns]
    if missing:
        raise ScoresRefused(
            f"{path}: no column {', '.join(missing)}; pass a scores.csv written by `xraytriage score` "
            "with this bundle"
        )
    if "model_id" in frame.columns:
        others = sorted(set(frame["model_id"]) - {model_id, ""})
        if others:
            raise ScoresRefused(
                f"{path}: scored by model {', '.join(others[:3])}, not {model_id}; "
                "monitor each model's scores with its own bundle"
            )


def _dedupe(table: pd.DataFrame) -> pd.DataFrame:
    """A scan scored by several runs counts once: its newest row (by scored_at), keyed by the DICOM
    SOPInstanceUID where there is one, else by the path (files without either column: '' for it)."""

    def column(name: str) -> pd.Series:
        values = table[name] if name in table.columns else pd.Series("", index=table.index)
        return values.fillna("").astype(str).str.strip()

    uid = column("sop_instance_uid")
    key = uid.where(uid != "", "path:" + column("path"))
    table = table.assign(_key=key.to_numpy(), _order=column("scored_at").to_numpy())
    table = table.sort_values("_order", kind="stable")
    return table.drop_duplicates("_key", keep="last").drop(columns=["_key", "_order"]).sort_index()


MISSING_SCOPE_NOTES = {
    IN_SCOPE: "out-of-scope rate unknown for those scans",
    OOD_SCORE: "OOD shift unknown for those scans",
    STUDY_DATE: "their window is 'unknown'",
}


def _missing_column_warnings(lacking: dict[str, list[str]], by: Sequence[str]) -> list[str]:
    out = []
    for column, files in lacking.items():
        if not files:
            continue
        if column in by:
            out.append(GROUP_FALLBACK_NOTE.format(column=column, files=", ".join(files)))
        else:
            out.append(
                f"column '{column}' absent from {', '.join(files)} (scored before scope checks): "
                + MISSING_SCOPE_NOTES[column]
            )
    return out


def _typed(table: pd.DataFrame, labels: Sequence[str], by: Sequence[str]) -> pd.DataFrame:
    """Text columns as read -> probabilities (float), in_scope (boolean, NA unknown), ood_score
    (float, NaN unknown), study_date (str) and group columns ('unknown' when blank)."""
    out = pd.DataFrame(
        {prob_column(label): pd.to_numeric(table[prob_column(label)], errors="coerce") for label in labels}
    )
    scope = table[IN_SCOPE].astype(str).str.strip()
    out[IN_SCOPE] = pd.array(np.where(scope == "", None, scope.isin(["1", "True", "true"])), dtype="boolean")
    out[OOD_SCORE] = pd.to_numeric(table[OOD_SCORE], errors="coerce")
    out[STUDY_DATE] = table[STUDY_DATE].astype(str).str.strip()
    for column in by:
        out[column] = table[column].astype(str).str.strip().replace("", UNKNOWN)
    return out


def read_deployed(
    paths: Sequence[str | Path], labels: Sequence[str], model_id: str, by: Sequence[str]
) -> DeployedScores:
    """Read, check and join the scores files; missing optional columns become warnings."""
    frames, lacking = [], {c: [] for c in (*SCOPE_COLUMNS, *by)}
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: scores file not found (give the scores.csv that score wrote)")
        frame = _read_one(p)
        _check_file(frame, p, labels, model_id)
        for column, files in lacking.items():
            if column not in frame.columns:
                files.append(p.name)
                frame[column] = ""
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    rows_read = len(table)
    table = _dedupe(table).reset_index(drop=True)
    warnings = _missing_column_warnings(lacking, by)
    out = _typed(table, labels, by)
    unreadable = out[[prob_column(label) for label in labels]].isna().any(axis=1)
    if unreadable.any():
        warnings.append(f"{int(unreadable.sum())} row(s) without a readable probability left out")
    out = out.loc[~unreadable].reset_index(drop=True)
    return DeployedScores(
        table=out,
        files=[str(p) for p in paths],
        rows_read=rows_read,
        duplicates_dropped=rows_read - len(table),
        has_in_scope=bool(out[IN_SCOPE].notna().any()),
        has_ood=bool(out[OOD_SCORE].notna().any()),
        warnings=warnings,
    )
