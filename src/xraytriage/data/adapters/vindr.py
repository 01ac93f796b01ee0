"""VinDr-CXR, in either published form: PhysioNet (``annotations/image_labels_{train,test}.csv``, one row
per radiologist and one column per label; images ``train/ID.dicom``, ``test/ID.dicom``) or the Kaggle
VinBigData competition (``train.csv``: one row per box with ``class_name``; images ``train/ID.dicom``).
VinDr publishes no patient identifier: each image is its own patient (see docs/data.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.data.adapters._common import (
    AdapterError,
    Prepared,
    PrepareOptions,
    existing,
    find_file,
    read_dicom_headers,
    read_table,
    require_columns,
    snake,
)

ID_COLUMNS = {"image_id", "rad_id"}
# Kaggle VinBigData box table columns besides class_name (not labels).
BOX_COLUMNS = {"class_id", "x_min", "y_min", "x_max", "y_max"}


def _vote(per_reader: pd.DataFrame, how: str) -> pd.DataFrame:
    """Reader rows -> image rows: positive if any reader (or more than half of them) said so."""
    grouped = per_reader.groupby("image_id", sort=False)
    if how == "any":
        return grouped.max()
    return (grouped.mean() > 0.5).astype(float)


def _from_image_labels(paths: list[tuple[Path, str]], how: str) -> pd.DataFrame:
    frames = []
    for path, split in paths:
        raw = read_table(path, dtype={"image_id": str})
        require_columns(raw, ("image_id",), path)
        cols = [c for c in raw.columns if c not in ID_COLUMNS]
        values = raw[cols].apply(pd.to_numeric, errors="coerce").fillna(0.0).clip(0, 1)
        values.columns = [snake(c) for c in cols]
        values = values.T.groupby(level=0, sort=False).max().T  # merge duplicate names after snake_case
        values["image_id"] = raw["image_id"].str.strip()
        voted = _vote(values, how).reset_index()
        voted["split"] = split
        frames.append(voted)
    return pd.concat(frames, ignore_index=True).fillna(0.0)


def _from_boxes(path: Path, how: str) -> pd.DataFrame:
    raw = read_table(path, dtype={"image_id": str})
    require_columns(raw, ("image_id", "class_name"), path)
    raw["image_id"] = raw["image_id"].str.strip()
    reader = raw["rad_id"] if "rad_id" in raw.columns else pd.Series("r", index=raw.index)
    marks = pd.crosstab([raw["image_id"], reader], raw["class_name"].map(snake)).clip(0, 1).astype(float)
    marks = marks.reset_index(level=1, drop=True)
    marks.index.name = "image_id"
    voted = _vote(marks.reset_index(), how).reset_index()
    voted["split"] = "train"
    return voted


def build(root: Path, opts: PrepareOptions) -> Prepared:
    physionet = [
        (p, split)
        for split in ("train", "test")
        if (p := find_file(root, [f"image_labels_{split}.csv"], depth=2)) is not None
    ]
    if physionet:
        table = _from_image_labels(physionet, opts.vote)
        base = physionet[0][0].parent.parent
        source = ", ".join(p.name for p, _ in physionet)
    else:
        boxes = find_file(root, ["train.csv", "annotations_train.csv"], depth=1)
        if boxes is None:
            raise AdapterError(
                f"{root}: neither annotations/image_labels_train.csv (PhysioNet VinDr-CXR) nor train.csv "
                "(Kaggle VinBigData) found; --root must be the dataset folder as downloaded"
            )
        table = _from_boxes(boxes, opts.vote)
        base = boxes.parent if boxes.name == "train.csv" else boxes.parent.parent
        source = boxes.name
    label_cols = [c for c in table.columns if c not in {"image_id", "split"}]
    findings = [c for c in label_cols if c not in {"no_finding"}]
    table["no_finding"] = (table[findings].sum(axis=1) == 0).astype(float)
    table["finding"] = 1.0 - table["no_finding"]
    labels = [c for c in label_cols if c != "no_finding"] + ["no_finding", "finding"]
    ids = table["image_id"].astype(str)
    paths = [base / s / f"{i}.dicom" for i, s in zip(ids, table["split"])]
    out = pd.DataFrame(
        {"path": [str(p) for p in paths], "patient_id": ids.to_numpy(), "study_id": ids.to_numpy()}
    )
    out = pd.concat([out, table[labels].reset_index(drop=True)], axis=1)
    out["split"] = table["split"].to_numpy()
    notes = [f"read {len(out)} images from {source}; label = {opts.vote} radiologist(s)"]
    if opts.read_headers:
        headers = read_dicom_headers(existing(paths), None, opts.progress)
        for column in ("sex", "age", "view", "manufacturer"):
            out[column] = headers[column].to_numpy()
    else:
        out["sex"], out["age"], out["view"], out["manufacturer"] = "unknown", np.nan, pd.NA, pd.NA
    out["site"] = "Hanoi (VinDr)"
    notes.append("VinDr-CXR has no patient identifier: each image counts as its own patient")
    return Prepared(out, labels, notes, has_official_split=bool(physionet))
