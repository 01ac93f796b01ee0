"""SIIM-ACR Pneumothorax Segmentation: ``train-rle.csv`` (``ImageId``, `` EncodedPixels`` with its leading
space; '-1' = no pneumothorax; one row per mask) and ``dicom-images-train/STUDY/SERIES/SOP.dcm``.
Patient, sex, age and view come from the DICOM headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.data.adapters._common import (
    Prepared,
    PrepareOptions,
    index_files,
    read_dicom_headers,
    read_table,
    require_columns,
    require_file,
)

TABLES = ("train-rle.csv", "stage_2_train.csv", "siim-pneumothorax-train-rle.csv", "train-rle.csv.gz")


def build(root: Path, opts: PrepareOptions) -> Prepared:
    table_path = require_file(root, TABLES, "SIIM-ACR pneumothorax")
    raw = read_table(table_path, dtype=str)
    require_columns(raw, ("ImageId", "EncodedPixels"), table_path)
    image_id = raw["ImageId"].str.strip()
    positive = raw["EncodedPixels"].fillna("-1").str.strip() != "-1"
    per_image = positive.groupby(image_id, sort=False).any()
    ids = per_image.index.astype(str)
    index = index_files(root, {".dcm"})
    paths = [index.get(f"{i}.dcm") for i in ids]
    fallback = table_path.parent / "dicom-images-train"
    out = pd.DataFrame(
        {"path": [str(p if p is not None else fallback / f"{i}.dcm") for p, i in zip(paths, ids)]}
    )
    notes = [
        f"read {len(raw)} rows ({len(ids)} images) from {table_path.name}; {len(index)} .dcm files found"
    ]
    if opts.read_headers:
        headers = read_dicom_headers(paths, None, opts.progress)
    else:
        headers = pd.DataFrame(index=range(len(ids)), columns=["dicom_patient_id", "study_uid", "view"])
        headers["sex"], headers["age"], headers["manufacturer"] = "unknown", np.nan, pd.NA
    pid = headers["dicom_patient_id"].astype("string")
    no_pid = pid.isna()
    out["patient_id"] = pid.where(~no_pid, pd.Series(ids, dtype="string")).to_numpy()
    out["study_id"] = headers["study_uid"].to_numpy()
    out["pneumothorax"] = per_image.to_numpy(dtype=float)
    out["finding"] = out["pneumothorax"]
    out["sex"], out["age"], out["view"] = headers["sex"], headers["age"], headers["view"]
    out["site"] = pd.NA
    out["manufacturer"] = headers["manufacturer"]
    out["n_masks"] = positive.groupby(image_id, sort=False).sum().to_numpy(dtype=int)
    if no_pid.any():
        notes.append(f"{int(no_pid.sum())} images without a readable PatientID use their ImageId as patient")
    return Prepared(out, ["pneumothorax", "finding"], notes)
