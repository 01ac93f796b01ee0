"""MIMIC-CXR-JPG 2.0.0 as PhysioNet ships it: ``mimic-cxr-2.0.0-{chexpert|negbio,metadata,split}.csv.gz``
and ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``. Sex and age come from MIMIC-IV ``patients.csv`` (optional)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.data.adapters._common import (
    AdapterError,
    Prepared,
    PrepareOptions,
    clean_sex,
    find_file,
    read_table,
    require_columns,
    snake,
)
from xraytriage.data.adapters.chexpert import LABELS, chexpert_labels

PREFIX = "mimic-cxr-2.0.0-"
SPLIT_NAMES = {"train": "train", "validate": "val", "validation": "val", "val": "val", "test": "test"}


def _table(root: Path, name: str, required: bool = True) -> Path | None:
    found = find_file(root, [f"{PREFIX}{name}.csv.gz", f"{PREFIX}{name}.csv"], depth=1)
    if found is None and required:
        raise AdapterError(
            f"{root}: no {PREFIX}{name}.csv(.gz) found; --root must be the mimic-cxr-jpg/2.0.0 folder"
        )
    return found


def _ages(meta: pd.DataFrame, patients_path: Path) -> tuple[list[str], np.ndarray]:
    """MIMIC-IV gives anchor_age at anchor_year; StudyDate is shifted with the same offset, so
    age at the study = anchor_age + (study year - anchor_year)."""
    patients = read_table(patients_path)
    require_columns(patients, ("subject_id", "gender", "anchor_age", "anchor_year"), patients_path)
    patients = patients.drop_duplicates("subject_id").set_index("subject_id")
    joined = patients.reindex(meta["subject_id"].to_numpy())
    age = pd.to_numeric(joined["anchor_age"], errors="coerce").to_numpy(dtype=float)
    if "StudyDate" in meta.columns:
        year = pd.to_numeric(meta["StudyDate"], errors="coerce").to_numpy(dtype=float) // 10000
        anchor = pd.to_numeric(joined["anchor_year"], errors="coerce").to_numpy(dtype=float)
        shifted = age + (year - anchor)
        age = np.where(np.isfinite(shifted), shifted, age)
    age = np.where((age >= 0) & (age < 150), age, np.nan)
    return clean_sex(joined["gender"]), age


def build(root: Path, opts: PrepareOptions) -> Prepared:
    meta_path = _table(root, "metadata")
    label_path = _table(root, opts.labeler)
    split_path = _table(root, "split", required=False)
    assert meta_path is not None and label_path is not None
    meta = read_table(meta_path)
    require_columns(meta, ("dicom_id", "subject_id", "study_id", "ViewPosition"), meta_path)
    raw_labels = read_table(label_path)
    require_columns(raw_labels, ("subject_id", "study_id", *LABELS), label_path)
    base = meta_path.parent
    merged = meta.merge(raw_labels, on=["subject_id", "study_id"], how="left", validate="many_to_one")
    labelled = merged["study_id"].isin(raw_labels["study_id"])
    labels = chexpert_labels(merged, opts.uncertain, label_path)
    labels[~labelled.to_numpy()] = np.nan  # study absent from the label table: unknown, not negative
    subject = merged["subject_id"].astype(np.int64).astype(str)
    study = merged["study_id"].astype(np.int64).astype(str)
    paths = [
        str(base / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg")
        for s, st, d in zip(subject, study, merged["dicom_id"].astype(str))
    ]
    out = pd.DataFrame({"path": paths, "patient_id": subject.to_numpy(), "study_id": study.to_numpy()})
    out = pd.concat([out, labels.reset_index(drop=True)], axis=1)
    notes = [f"read {len(meta)} images from {meta_path.name}, labels from {label_path.name}"]
    if split_path is not None:
        split = read_table(split_path)
        require_columns(split, ("dicom_id", "split"), split_path)
        mapping = split.drop_duplicates("dicom_id").set_index("dicom_id")["split"].astype(str).str.lower()
        out["split"] = merged["dicom_id"].map(mapping).map(SPLIT_NAMES).to_numpy()
    if opts.patients is not None:
        out["sex"], out["age"] = _ages(merged, Path(opts.patients))
        notes.append(f"sex/age from {Path(opts.patients).name} (age at study from anchor_age/anchor_year)")
    else:
        out["sex"], out["age"] = "unknown", np.nan
        notes.append("no --patients (MIMIC-IV patients.csv): sex and age are unknown")
    out["view"] = merged["ViewPosition"].astype("string").str.strip().str.upper().to_numpy()
    out["site"] = "Beth Israel Deaconess Medical Center"
    out["manufacturer"] = pd.NA
    if (~labelled).any():
        notes.append(f"{int((~labelled).sum())} images of studies without labels: labels left blank")
    return Prepared(out, [*map(snake, LABELS), "finding"], notes, has_official_split=split_path is not None)
