"""RSNA Pneumonia Detection Challenge (Kaggle): ``stage_2_train_labels.csv`` (one row per box, so several
rows per patientId), optional ``stage_2_detailed_class_info.csv``, images ``stage_2_train_images/ID.dcm``.
Sex, age and view are read from the DICOM headers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xraytriage.data.adapters._common import (
    Prepared,
    PrepareOptions,
    existing,
    find_file,
    read_dicom_headers,
    read_table,
    require_columns,
    require_file,
)


def build(root: Path, opts: PrepareOptions) -> Prepared:
    labels_path = require_file(
        root, ["stage_2_train_labels.csv", "stage_1_train_labels.csv"], "RSNA Pneumonia"
    )
    raw = read_table(labels_path, dtype={"patientId": str})
    require_columns(raw, ("patientId", "Target"), labels_path)
    target = pd.to_numeric(raw["Target"], errors="coerce")
    per_image = target.groupby(raw["patientId"].str.strip(), sort=False).max()
    boxes = target.groupby(raw["patientId"].str.strip(), sort=False).sum()
    notes = [f"read {len(raw)} rows ({len(per_image)} images) from {labels_path.name}"]
    stage = labels_path.name.split("_train")[0]
    image_dir = labels_path.parent / f"{stage}_train_images"
    ids = per_image.index.astype(str)
    paths = [image_dir / f"{i}.dcm" for i in ids]
    out = pd.DataFrame({"path": [str(p) for p in paths], "patient_id": ids, "study_id": ids})
    out["pneumonia"] = per_image.to_numpy(dtype=float)
    out["n_boxes"] = boxes.to_numpy(dtype=int)
    labels = ["pneumonia"]
    info_path = find_file(labels_path.parent, [f"{stage}_detailed_class_info.csv"], depth=0)
    if info_path is not None:
        info = read_table(info_path, dtype={"patientId": str})
        require_columns(info, ("patientId", "class"), info_path)
        info["patientId"] = info["patientId"].str.strip()
        cls = out["patient_id"].map(info.drop_duplicates("patientId").set_index("patientId")["class"])
        out["rsna_class"] = cls.to_numpy()
        known = cls.notna().to_numpy()
        out["no_finding"] = (cls.str.strip() == "Normal").astype(float).where(known).to_numpy()
        out["finding"] = 1.0 - out["no_finding"]
        labels += ["no_finding", "finding"]
        notes.append("finding = class is not 'Normal' ('No Lung Opacity / Not Normal' counts as a finding)")
    else:
        out["finding"] = out["pneumonia"]
        labels.append("finding")
        notes.append("no detailed_class_info.csv: finding = pneumonia (lung opacity)")
    if opts.read_headers:
        headers = read_dicom_headers(existing(paths), None, opts.progress)
        out["sex"], out["age"], out["view"] = headers["sex"], headers["age"], headers["view"]
        out["manufacturer"] = headers["manufacturer"]
        notes.append(f"sex/age/view from the DICOM headers of {int(headers['view'].notna().sum())} files")
    else:
        out["sex"], out["age"], out["view"], out["manufacturer"] = "unknown", float("nan"), pd.NA, pd.NA
    out["site"] = "NIH Clinical Center"  # the challenge images are a relabelled subset of ChestX-ray14
    return Prepared(out, labels, notes)
