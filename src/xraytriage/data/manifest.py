"""The manifest: one row per scan with labels, patient, split and subgroup attributes.

Schema (lower-case columns): ``path`` (absolute, or relative to the manifest's folder / ``data.root``),
``patient_id``, ``study_id``, one column per label (1 positive, 0 negative, -1 uncertain, blank unknown),
``split`` (train / val / test), optional ``fold`` (0..k-1, blank for held-out test rows), and subgroup
attributes ``sex`` (F/M/unknown), ``age`` (years), ``view``, ``site``, ``manufacturer``. Any other column
is kept as is. ``docs/data.md`` documents it for users.

Patient IDs are the user's own data: error messages give counts and manifest line numbers, never IDs.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("path", "patient_id")
SUBGROUP_COLUMNS = ("sex", "age", "view", "site", "manufacturer")
ID_COLUMNS = ("path", "patient_id", "study_id")
SPLIT_COLUMNS = ("split", "fold")
ALLOWED_LABEL_VALUES = {1.0, 0.0, -1.0}
SEX_VALUES = ("F", "M", "unknown")


class ManifestError(ValueError):
    """A manifest the user must fix; the message names the file, the column and the rows."""


def _rows(mask: pd.Series | np.ndarray, limit: int = 5) -> str:
    values = mask.to_numpy() if isinstance(mask, pd.Series) else np.asarray(mask)
    idx = list(np.flatnonzero(values))
    shown = ", ".join(str(i + 2) for i in idx[:limit])  # +2: header line and 1-based numbering
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"line(s) {shown}{more}"


def label_values_problem(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values as float, mask of cells that are not 1/0/-1/blank). Accepts '1', '1.0', ' -1 '."""
    text = series.astype("string").str.strip()
    blank = text.isna() | (text == "")
    values = pd.to_numeric(text.mask(blank), errors="coerce").astype(float)
    bad = ~blank & (values.isna() | ~values.isin(list(ALLOWED_LABEL_VALUES)))
    return values.where(~bad), bad


def _bad_values_text(series: pd.Series, bad: pd.Series, limit: int = 5) -> str:
    counts = Counter(str(v).strip() for v in series[bad])
    shown = ", ".join(f"{v!r} x{n}" for v, n in counts.most_common(limit))
    more = f" and {len(counts) - limit} other value(s)" if len(counts) > limit else ""
    return shown + more


def _read_table(p: Path) -> pd.DataFrame:
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".parquet":
        try:
            return pd.read_parquet(p)
        except ImportError:
            raise ManifestError(
                f"{p}: reading Parquet needs pyarrow (pip install pyarrow), or write the manifest as CSV"
            ) from None
    return pd.read_csv(p, dtype={"patient_id": str, "study_id": str, "path": str}, keep_default_na=True)


def resolve_paths(paths: Iterable[str], base: Path) -> list[str]:
    """Absolute paths; relative ones are taken relative to ``base`` (normalised, symlinks kept)."""
    out = []
    for q in paths:
        qp = Path(os.path.expanduser(q))
        out.append(os.path.normpath(qp if qp.is_absolute() else base / qp))
    return out


def missing_files(df: pd.DataFrame) -> pd.Series:
    """Mask of rows whose (already absolute) ``path`` is not an existing file."""
    return pd.Series([not os.path.isfile(q) for q in df["path"]], index=df.index, dtype=bool)


def describe_missing(df: pd.DataFrame, mask: pd.Series, source: str, limit: int = 10) -> str:
    """'N of M files listed in SOURCE do not exist' plus the first few paths and the fix."""
    paths = df.loc[mask, "path"].astype(str).tolist()
    shown = "\n  ".join(paths[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return (
        f"{source}: {len(paths)} of {len(df)} image files do not exist ({_rows(mask)}):\n  {shown}{more}\n"
        "Fix the root folder (--root / data.root), or drop those rows (prepare --drop-missing)."
    )


def leakage_message(df: pd.DataFrame, source: str, split_column: str = "split") -> str | None:
    """One paragraph describing patients in more than one split (counts and line numbers, no IDs)."""
    leaks = patient_leakage(df, split_column)
    if not leaks:
        return None
    combos = Counter("+".join(s) for s in leaks.values())
    combo_text = ", ".join(f"{c}: {n}" for c, n in combos.most_common())
    examples = []
    pid = df["patient_id"].astype(str)
    for patient in list(leaks)[:3]:
        examples.append(_rows(pid == patient, limit=4))
    n_rows = int(pid.isin(list(leaks)).sum())
    return (
        f"{source}: {len(leaks)} patient(s) appear in more than one {split_column} ({combo_text}; "
        f"{n_rows} rows). Images of one patient must stay in one split, or test results are optimistic. "
        f"Examples (rows of one patient each): {'; '.join(examples)}. "
        "Re-split by patient with `xraytriage split MANIFEST --out NEW.csv`."
    )


def read_manifest(
    path: str | Path,
    root: str | Path | None = None,
    labels: list[str] | None = None,
    *,
    check_files: bool = False,
    drop_missing: bool = False,
    leakage: Literal["error", "warn", "ignore"] = "error",
) -> pd.DataFrame:
    """Load and validate a manifest; ``path`` values come back absolute.

    ``check_files`` stats every file (slow on network drives, hence off by default); missing files are an
    error unless ``drop_missing``. Patients in two splits are an error unless ``leakage`` says otherwise.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{p}: manifest not found")
    try:
        df = _read_table(p)
    except ManifestError:
        raise
    except Exception as exc:
        raise ManifestError(f"{p}: cannot be read as CSV/Parquet ({exc.__class__.__name__}: {exc})") from None
    return validate_manifest(
        df,
        source=str(p),
        base=Path(root) if root is not None else p.resolve().parent,
        labels=labels,
        check_files=check_files,
        drop_missing=drop_missing,
        leakage=leakage,
    )


def validate_manifest(
    df: pd.DataFrame,
    *,
    source: str = "manifest",
    base: str | Path | None = None,
    labels: list[str] | None = None,
    check_files: bool = False,
    drop_missing: bool = False,
    leakage: Literal["error", "warn", "ignore"] = "error",
) -> pd.DataFrame:
    """Check and normalise a manifest table; raise :class:`ManifestError` naming column, rows and fix."""
    import logging

    log = logging.getLogger(__name__)
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    lower = {c.lower(): c for c in df.columns}
    for column in REQUIRED_COLUMNS:
        if column not in df.columns:
            hint = f" (found '{lower[column]}': columns are lower-case)" if column in lower else ""
            raise ManifestError(
                f"{source}: required column '{column}' is missing{hint} (columns: {', '.join(df.columns)})"
            )
    if df.columns.duplicated().any():
        dups = sorted({c for c in df.columns[df.columns.duplicated()]})
        raise ManifestError(f"{source}: column(s) {', '.join(dups)} appear more than once")
    for label in labels or []:
        if label not in df.columns:
            close = [c for c in df.columns if c.lower().replace(" ", "_") == label.lower()]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ManifestError(
                f"{source}: label column '{label}' is missing{hint}; set data.labels to columns that exist"
            )
        values, bad = label_values_problem(df[label])
        if bad.any():
            raise ManifestError(
                f"{source}: column '{label}' has values outside {{1, 0, -1, blank}} at {_rows(bad)} "
                f"(values: {_bad_values_text(df[label], bad)})"
            )
        df[label] = values
    empty_path = df["path"].isna() | (df["path"].astype("string").str.strip() == "")
    if empty_path.any():
        raise ManifestError(f"{source}: column 'path' is empty at {_rows(empty_path)}")
    df["patient_id"] = df["patient_id"].astype("string").str.strip()
    missing_pid = df["patient_id"].isna() | (df["patient_id"] == "")
    if missing_pid.any():
        raise ManifestError(
            f"{source}: column 'patient_id' is empty at {_rows(missing_pid)} "
            f"({int(missing_pid.sum())} rows); "
            "every image needs a patient so splits can keep a patient's images together"
        )
    if "study_id" in df.columns:
        df["study_id"] = df["study_id"].astype("string").str.strip()
    base_path = Path(base) if base is not None else Path.cwd()
    df["path"] = resolve_paths(df["path"].astype(str).str.strip(), base_path.resolve())
    dup = df["path"].duplicated(keep=False)
    if dup.any():
        raise ManifestError(
            f"{source}: column 'path' repeats the same file at {_rows(dup)} "
            f"({int(df['path'].duplicated().sum())} duplicate rows); keep one row per image"
        )
    if "split" in df.columns:
        df["split"] = df["split"].astype("string").str.strip().str.lower().replace("", pd.NA)
    if "fold" in df.columns:
        folds = pd.to_numeric(df["fold"], errors="coerce")
        bad = df["fold"].notna() & (folds.isna() | (folds < 0) | (folds % 1 != 0))
        if bad.any():
            raise ManifestError(
                f"{source}: column 'fold' must be a whole number >= 0 or blank at {_rows(bad)}"
            )
        df["fold"] = folds.astype("Int64")
    if "sex" in df.columns:
        from xraytriage.io.metadata import normalise_sex

        df["sex"] = [normalise_sex(v) if pd.notna(v) else "unknown" for v in df["sex"]]
    if "age" in df.columns:
        from xraytriage.io.metadata import parse_age

        ages = [parse_age(v) if pd.notna(v) else None for v in df["age"]]
        df["age"] = pd.Series([np.nan if a is None else a for a in ages], index=df.index, dtype=float)
    if check_files:
        gone = missing_files(df)
        if gone.any():
            message = describe_missing(df, gone, source)
            if not drop_missing:
                raise ManifestError(message)
            log.warning("dropping rows whose file is missing: %s", message.splitlines()[0])
            df = df.loc[~gone]
    if leakage != "ignore":
        for column in SPLIT_COLUMNS:
            message = leakage_message(df, source, column) if column in df.columns else None
            if message and leakage == "error":
                raise ManifestError(message)
            if message:
                log.warning("%s", message)
    return df.reset_index(drop=True)


def check_split_values(df: pd.DataFrame, allowed: Iterable[str], source: str) -> None:
    """Refuse ``split`` values outside ``allowed``: a misspelt "tset" would silently drop its rows."""
    if "split" not in df.columns:
        return
    names = {str(a).strip().lower() for a in allowed}
    values = df["split"].astype("string").str.strip().str.lower()
    bad = (values.notna() & ~values.isin(names)).fillna(False).astype(bool)
    if bad.any():
        raise ManifestError(
            f"{source}: column 'split' has values other than {', '.join(sorted(names))} at {_rows(bad)} "
            f"(values: {_bad_values_text(df['split'], bad)}); correct them, or name your splits with "
            "data.train_split / data.val_split / data.test_split"
        )


def patient_leakage(df: pd.DataFrame, split_column: str = "split") -> dict[str, list[str]]:
    """Patients that appear in more than one split: {patient_id: [splits]}. Empty means no leakage."""
    if split_column not in df.columns:
        return {}
    sub = df.dropna(subset=[split_column])
    splits = sub.groupby(sub["patient_id"].astype(str))[split_column].unique()
    return {str(pid): sorted(map(str, s)) for pid, s in splits.items() if len(s) > 1}


def order_columns(df: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Schema order: ids, labels, split/fold, subgroups, then anything else as it came."""
    first = [c for c in ID_COLUMNS if c in df.columns]
    first += [c for c in labels if c in df.columns and c not in first]
    first += [c for c in (*SPLIT_COLUMNS, *SUBGROUP_COLUMNS) if c in df.columns and c not in first]
    return df[first + [c for c in df.columns if c not in first]]


def relative_paths(paths: Iterable[str], manifest_dir: Path, absolute: bool = False) -> list[str]:
    """Paths as written into a manifest: relative to its folder when the image lies under it."""
    manifest_dir = manifest_dir.resolve()
    out = []
    for q in paths:
        qp = Path(q)
        if not absolute and qp.is_absolute():
            try:
                out.append(qp.relative_to(manifest_dir).as_posix())
                continue
            except ValueError:
                pass
        out.append(str(qp))
    return out


def write_manifest(
    df: pd.DataFrame, path: str | Path, labels: list[str] | None = None, *, absolute_paths: bool = False
) -> Path:
    """Atomically write CSV (or Parquet by suffix) with paths relative to the manifest where possible."""
    from xraytriage.utils.atomic import atomic_path
    from xraytriage.utils.csv_safety import safe_frame

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = order_columns(df, labels or [])
    table = table.assign(path=relative_paths(table["path"].astype(str), out.parent, absolute_paths))
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ManifestError(f"{out}: writing Parquet needs pyarrow (pip install pyarrow)") from None
        with atomic_path(out) as tmp:
            table.to_parquet(tmp, index=False)
    else:
        with atomic_path(out) as tmp:  # text cells cannot start a spreadsheet formula
            safe_frame(table).to_csv(tmp, index=False, float_format="%g")
    return out


def guess_label_columns(df: pd.DataFrame) -> list[str]:
    """Columns that hold only 1 / 0 / -1 / blank and are not schema columns: the likely labels."""
    skip = {*ID_COLUMNS, *SPLIT_COLUMNS, *SUBGROUP_COLUMNS}
    found = []
    for column in df.columns:
        if column in skip or df[column].notna().sum() == 0:
            continue
        _, bad = label_values_problem(df[column])
        if not bad.any():
            found.append(column)
    return found
