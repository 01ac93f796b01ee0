"""CheXpert (v1.0 and v1.0-small): ``train.csv`` / ``valid.csv`` whose ``Path`` starts with the
dataset folder name; labels 1 / 0 / -1 (uncertain) / blank (not mentioned)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.data.adapters._common import (
    AdapterError,
    Prepared,
    PrepareOptions,
    any_finding,
    apply_uncertain,
    clean_age,
    clean_sex,
    find_file,
    read_table,
    require_columns,
    snake,
)

LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
# Pathologies: everything except 'No Finding' and 'Support Devices' (a device is not a finding to triage).
PATHOLOGIES = tuple(snake(n) for n in LABELS if n not in ("No Finding", "Support Devices"))
_PATIENT = re.compile(r"(patient\d+)[/\\](study\d+)")


def chexpert_labels(raw: pd.DataFrame, policy: str, source: Path) -> pd.DataFrame:
    """Publisher's 14 columns -> snake_case floats; blank (not mentioned) -> 0, -1 per ``policy``."""
    require_columns(raw, LABELS, source)
    labels = pd.DataFrame({snake(n): pd.to_numeric(raw[n], errors="coerce") for n in LABELS})
    bad = raw[list(LABELS)].notna().to_numpy() & ~np.isin(labels.to_numpy(), [1.0, 0.0, -1.0])
    if bad.any():
        raise AdapterError(f"{source}: label values other than 1, 0, -1 or blank ({int(bad.sum())} cells)")
    labels = labels.fillna(0.0)  # the labeller's blank means "not mentioned", i.e. negative
    labels = apply_uncertain(labels, policy)  # type: ignore[arg-type]
    labels["finding"] = any_finding(labels, PATHOLOGIES, "no_finding")
    return labels


def _resolve(csv_dir: Path, rel: str) -> Path:
    parts = Path(rel).parts
    if parts and (parts[0] == csv_dir.name or parts[0].lower().startswith("chexpert-v1.0")):
        parts = parts[1:]
    return csv_dir.joinpath(*parts)


def build(root: Path, opts: PrepareOptions) -> Prepared:
    train = find_file(root, ["train.csv"], depth=1)
    if train is None:
        raise AdapterError(f"{root}: no train.csv found; --root must be the CheXpert-v1.0(-small) folder")
    frames = []
    for name, split in (("train.csv", "train"), ("valid.csv", "val")):
        csv = train.parent / name
        if csv.is_file():
            part = read_table(csv)
            part["_split"] = split
            frames.append((csv, part))
    out_parts = []
    for csv, raw in frames:
        require_columns(raw, ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"), csv)
        ids = raw["Path"].astype(str).str.extract(_PATIENT)
        if ids[0].isna().any():
            raise AdapterError(f"{csv}: {int(ids[0].isna().sum())} Path values without patientNNNNN/studyN")
        frontal = raw["Frontal/Lateral"].astype(str).str.strip().str.lower() == "frontal"
        view = raw["AP/PA"].astype("string").str.strip().str.upper()
        view = view.where(frontal | view.notna(), "LATERAL")
        part = pd.DataFrame(
            {
                "path": [str(_resolve(train.parent, p)) for p in raw["Path"].astype(str)],
                "patient_id": ids[0].to_numpy(),
                "study_id": (ids[0] + "/" + ids[1]).to_numpy(),
            }
        )
        part = pd.concat([part, chexpert_labels(raw, opts.uncertain, csv)], axis=1)
        part["split"] = raw["_split"].to_numpy()
        part["sex"] = clean_sex(raw["Sex"])
        part["age"] = clean_age(raw["Age"])
        part["view"] = view.to_numpy()
        part["site"] = "Stanford Hospital"
        part["manufacturer"] = pd.NA
        out_parts.append(part)
    out = pd.concat(out_parts, ignore_index=True)
    labels = [*map(snake, LABELS), "finding"]
    notes = [
        f"read {len(out)} rows from {', '.join(c.name for c, _ in frames)}",
        f"uncertain labels (-1): {opts.uncertain}; blank (not mentioned) -> 0",
    ]
    return Prepared(out, labels, notes, has_official_split=True)
