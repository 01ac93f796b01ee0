"""Output layout of a scoring run: column names, row formatting, Parquet export, study aggregation."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

import pandas as pd

from xraytriage.columns import (  # noqa: F401  (re-exported: scoring's column names)
    FLAG_PREFIX,
    IN_SCOPE,
    MANUFACTURER,
    OOD_SCORE,
    PROB_PREFIX,
    SCOPE_COLUMNS,
    SCOPE_REASONS,
    SITE,
    STUDY_DATE,
    VIEW,
    flag_column,
    prob_column,
    prob_labels,
)
from xraytriage.utils.atomic import atomic_path
from xraytriage.utils.csv_safety import safe_frame

ERROR_COLUMNS = ["path", "reason", "message", "scored_at"]
OUT_OF_SCOPE = "out_of_scope"  # errors-file reason of a scan skipped under score.out_of_scope=skip


def error_reason_counts(errors: str | Path) -> Counter[str]:
    """Rows per reason among the complete rows of an errors file (absent: none), read once, the way
    the journals write it (file names that are not UTF-8 survive)."""
    import csv

    from xraytriage.scoring.journal import ENCODING_ERRORS

    counts: Counter[str] = Counter()
    try:
        with open(errors, encoding="utf-8", errors=ENCODING_ERRORS, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or "reason" not in header:
                return counts
            where = header.index("reason")
            counts.update(row[where] for row in reader if len(row) == len(header))  # torn line: no row
    except FileNotFoundError:
        pass
    return counts


def count_error_rows(errors: str | Path, skipped_reasons: str | Collection[str]) -> tuple[int, int]:
    """(failures, skipped files) in an errors file; ``skipped_reasons``: the reasons that are
    decisions, not failures (``not_a_scan``, ``out_of_scope``)."""
    skipped_set = {skipped_reasons} if isinstance(skipped_reasons, str) else set(skipped_reasons)
    counts = error_reason_counts(errors)
    skipped = sum(n for reason, n in counts.items() if reason in skipped_set)
    return sum(counts.values()) - skipped, skipped


def score_columns(labels: Sequence[str]) -> list[str]:
    """path, DICOM UIDs, ``prob_<label>`` and ``flag_<label>`` per class, the scope columns, model id,
    time. No names, no birth dates (the study date is the exam's, for monitoring by date)."""
    return [
        "path",
        "sop_instance_uid",
        "study_instance_uid",
        *[prob_column(label) for label in labels],
        *[flag_column(label) for label in labels],
        *SCOPE_COLUMNS,
        "model_id",
        "scored_at",
    ]


def is_parquet(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".parquet"


def journal_for(out: str | Path) -> Path:
    """Where rows are journaled: the CSV itself, or a ``.partial.csv`` beside a Parquet target."""
    out = Path(out)
    return out.with_name(out.name + ".partial.csv") if is_parquet(out) else out


def display_path(path: str) -> str:
    """``path`` as valid UTF-8 text, for Parquet (whose strings must be UTF-8): a file name that is not
    UTF-8 keeps its odd bytes as ``\\xNN`` escapes. Every valid name is returned unchanged."""
    if path.isascii():
        return path
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _read_scores_csv(path: Path, labels: Sequence[str]) -> pd.DataFrame:
    # path as Python str: a name that is not UTF-8 holds surrogates, which Arrow-backed strings refuse
    dtypes: dict[str, object] = {"path": object}
    dtypes.update(dict.fromkeys(["sop_instance_uid", "study_instance_uid", "model_id"], "string"))
    dtypes.update({prob_column(label): "float64" for label in labels})
    dtypes.update({flag_column(label): "int8" for label in labels})
    dtypes.update(dict.fromkeys([SCOPE_REASONS, STUDY_DATE, VIEW, MANUFACTURER, SITE], "string"))
    dtypes.update({IN_SCOPE: "int8", OOD_SCORE: "float64"})
    return pd.read_csv(
        path,
        dtype=dtypes,
        keep_default_na=False,
        na_values={OOD_SCORE: [""]},  # unavailable: NaN, not an error (older files lack the column)
        encoding_errors="surrogateescape",
    )


def read_scores(out: str | Path, labels: Sequence[str]) -> pd.DataFrame:
    """The finished output (CSV or Parquet) as a DataFrame."""
    out = Path(out)
    return pd.read_parquet(out) if is_parquet(out) else _read_scores_csv(out, labels)


def parquet_done(out: Path) -> set[str]:
    """Paths already in a finished Parquet output (resume of a Parquet run that completed before)."""
    if not out.exists():
        return set()
    import pyarrow.parquet as pq

    return {str(v) for v in pq.read_table(out, columns=["path"]).column(0).to_pylist()}


def finalize_parquet(out: Path, labels: Sequence[str]) -> None:
    """Fold the CSV journal into the Parquet file (atomically), then drop the journal.

    A kill between the rename and the journal's deletion leaves rows in both: the next run folds in
    only the journal rows the Parquet file does not already hold, so no row is written twice.
    """
    journal = journal_for(out)
    if not journal.exists():
        return
    new = _read_scores_csv(journal, labels)
    new["path"] = new["path"].map(display_path).astype("string")
    old = pd.read_parquet(out) if out.exists() else None
    if old is not None:
        new = new[~new["path"].isin(set(old["path"].astype(str)))]
    if old is not None and new.empty:
        journal.unlink()
        return
    table = pd.concat([old, new], ignore_index=True) if old is not None else new
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    journal.unlink()


def aggregate_studies(
    scores: pd.DataFrame, labels: Sequence[str], thresholds: dict[str, float], out: str | Path
) -> int:
    """One row per StudyInstanceUID: maximum probability over its images, flag at the same threshold,
    and raised whenever one of its images was flagged out of scope (never a negative study from an
    image the model was not validated on); ``in_scope`` is 0 when any of its images is out of scope.

    Scans without a StudyInstanceUID (PNG/JPEG/TIFF, or DICOM lacking it) are not aggregated.
    """
    have = scores[scores["study_instance_uid"].fillna("").astype(str) != ""]
    prob_cols = [prob_column(label) for label in labels]
    grouped = have.groupby("study_instance_uid", sort=True)
    studies = grouped[prob_cols].max()
    studies.insert(0, "n_images", grouped.size())
    for label in labels:
        flag = studies[prob_column(label)] >= thresholds[label]
        if flag_column(label) in have.columns:
            flag |= grouped[flag_column(label)].max().astype(bool)
        studies[flag_column(label)] = flag.astype("int8")
    if IN_SCOPE in have.columns:
        studies[IN_SCOPE] = grouped[IN_SCOPE].min().astype("int8")
    studies["model_id"] = grouped["model_id"].first()
    studies = studies.reset_index()
    target = Path(out)
    with atomic_path(target) as tmp:
        if is_parquet(target):
            studies.to_parquet(tmp, index=False)
        else:
            safe_frame(studies).to_csv(tmp, index=False, float_format="%.6f")
    return len(studies)
