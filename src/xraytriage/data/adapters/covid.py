"""COVID-19 image data collection (github.com/ieee8023/covid-chestxray-dataset): ``metadata.csv`` with
``patientid``, ``offset``, ``sex``, ``age``, ``finding`` ('Pneumonia/Viral/COVID-19'), ``view``,
``modality``, ``location``, ``folder``, ``filename``...; images in ``images/``. CT rows are left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.data.adapters._common import (
    Prepared,
    PrepareOptions,
    clean_age,
    clean_sex,
    read_table,
    require_columns,
    require_file,
    snake,
)

UNKNOWN_FINDINGS = {"todo", "unknown", ""}


def finding_labels(finding: pd.Series) -> tuple[pd.DataFrame, list[str]]:
    """'Pneumonia/Viral/COVID-19' -> pneumonia=1, viral=1, covid_19=1 (one column per path component).

    'No Finding' -> no_finding=1 and all else 0; 'todo'/'Unknown' -> every label blank.
    """
    parts = finding.fillna("").astype(str).map(lambda s: [p.strip() for p in s.split("/") if p.strip()])
    unknown = parts.map(lambda p: not p or p[0].lower() in UNKNOWN_FINDINGS)
    names: list[str] = []
    for p, u in zip(parts, unknown):
        for item in [] if u else p:
            name = snake(item)
            if name not in names and name != "no_finding":
                names.append(name)
    sets = parts.map(lambda p: {snake(i) for i in p})
    table = pd.DataFrame({n: sets.map(lambda s, n=n: float(n in s)) for n in names}, index=finding.index)
    table["no_finding"] = sets.map(lambda s: float("no_finding" in s))
    table["finding"] = 1.0 - table["no_finding"]
    table[unknown.to_numpy()] = np.nan
    return table, [*names, "no_finding", "finding"]


def build(root: Path, opts: PrepareOptions) -> Prepared:
    meta_path = require_file(root, ["metadata.csv"], "covid-chestxray-dataset")
    raw = read_table(meta_path, dtype={"patientid": str, "filename": str, "folder": str})
    require_columns(
        raw, ("patientid", "sex", "age", "finding", "view", "modality", "folder", "filename"), meta_path
    )
    xray = raw["modality"].astype(str).str.strip().str.lower().isin({"x-ray", "xray", "cr", "dx"})
    notes = [f"read {len(raw)} rows from {meta_path.name}; kept {int(xray.sum())} X-ray rows (CT left out)"]
    raw = raw.loc[xray].reset_index(drop=True)
    labels, names = finding_labels(raw["finding"])
    folder = raw["folder"].fillna("images").astype(str).str.strip()
    paths = [str(meta_path.parent / f / n.strip()) for f, n in zip(folder, raw["filename"].astype(str))]
    pid = raw["patientid"].astype(str).str.strip()
    offset = pd.to_numeric(raw["offset"], errors="coerce") if "offset" in raw.columns else None
    study = pid + "_" + (offset.astype("Int64").astype("string").fillna("na") if offset is not None else "na")
    out = pd.DataFrame({"path": paths, "patient_id": pid.to_numpy(), "study_id": study.to_numpy()})
    out = pd.concat([out, labels], axis=1)
    out["sex"] = clean_sex(raw["sex"])
    out["age"] = clean_age(raw["age"])
    out["view"] = raw["view"].astype("string").str.strip().str.upper().to_numpy()
    out["site"] = (
        raw["location"].astype("string").str.strip().to_numpy() if "location" in raw.columns else pd.NA
    )
    out["manufacturer"] = pd.NA
    for extra in ("RT_PCR_positive", "survival", "intubated", "date"):
        if extra in raw.columns:
            out[extra.lower()] = raw[extra].to_numpy()
    unknown = labels["finding"].isna()
    if unknown.any():
        notes.append(f"{int(unknown.sum())} rows with finding 'todo'/'Unknown': labels left blank")
    return Prepared(out, names, notes)
