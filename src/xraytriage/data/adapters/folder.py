"""A plain folder: one subfolder per class (``ROOT/CLASS/...``), optionally inside split folders
(``ROOT/train|val|valid|test/CLASS/...``), plus an optional demographics CSV, or DICOM tags read from the
files. This is the adapter for hospital exports."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.data.adapters._common import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    AdapterError,
    Prepared,
    PrepareOptions,
    clean_age,
    clean_sex,
    log,
    read_dicom_headers,
    read_table,
    snake,
)
from xraytriage.data.manifest import ID_COLUMNS, SPLIT_COLUMNS, SUBGROUP_COLUMNS

SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
NEGATIVE = re.compile(r"^(normal|negative|healthy|no_?finding|no|none|benign|control)$")
RESERVED = {*ID_COLUMNS, *SPLIT_COLUMNS, *SUBGROUP_COLUMNS, "finding"}
# Demographics CSV column spellings -> manifest column (compared after snake_case).
ALIASES = {
    "patient_id": ("patient_id", "patientid", "patient", "subject_id", "mrn_hash", "pseudo_id"),
    "study_id": ("study_id", "studyid", "accession_hash", "study_instance_uid", "studyinstanceuid"),
    "sex": ("sex", "gender", "patient_gender", "patient_sex", "patientsex"),
    "age": ("age", "patient_age", "patientage", "age_years"),
    "view": ("view", "view_position", "viewposition", "projection"),
    "site": ("site", "hospital", "institution", "location"),
    "manufacturer": ("manufacturer", "vendor", "device"),
}
KEYS = ("path", "relative_path", "file", "filename", "file_name", "image", "image_index", "image_id")


def class_column(folder_name: str) -> str:
    """'1_abnormal' -> 'abnormal' (a numeric prefix only orders the folders), 'COVID-19' -> 'covid_19'."""
    name = snake(re.sub(r"^\d+[_\- ]+", "", folder_name)) or snake(folder_name)
    return name if not name[0].isdigit() else f"class_{name}"


def _is_image(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    if suffix == "" and not path.name.startswith("."):
        from xraytriage.io.detect import sniff_format

        try:
            return sniff_format(path) is not None
        except OSError:
            return False
    return False


def _scan(root: Path) -> pd.DataFrame:
    top = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not top:
        raise AdapterError(f"{root}: no subfolders; the folder adapter expects ROOT/CLASS/image files")
    split_level = all(d.name.lower() in SPLIT_FOLDERS for d in top)
    rows = []
    for first in top:
        class_dirs = (
            [(d, SPLIT_FOLDERS[first.name.lower()]) for d in sorted(first.iterdir()) if d.is_dir()]
            if split_level
            else [(first, None)]
        )
        for class_dir, split in class_dirs:
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and _is_image(f):
                    rows.append(
                        {
                            "path": str(f),
                            "class": class_dir.name,
                            "split": split,
                            "relative": f.relative_to(root).as_posix(),
                        }
                    )
    if not rows:
        raise AdapterError(f"{root}: no image files (.png .jpg .tif .dcm ...) under the class folders")
    return pd.DataFrame(rows)


def _demographics(files: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, list[str]]:
    raw = read_table(path, dtype=str)
    by_snake = {snake(c): c for c in raw.columns}
    key = next((by_snake[k] for k in KEYS if k in by_snake), None)
    if key is None:
        raise AdapterError(
            f"{path}: needs a column naming the image: one of {', '.join(KEYS)} "
            f"(found: {', '.join(raw.columns)})"
        )
    values = raw[key].astype(str).str.strip().str.replace("\\", "/", regex=False)
    by_relative = values.isin(set(files["relative"])).sum()
    by_name = values.map(lambda v: v.rsplit("/", 1)[-1])
    names = files["relative"].map(lambda v: v.rsplit("/", 1)[-1])
    if by_relative >= by_name.isin(set(names)).sum() and by_relative > 0:
        join_files, join_table = files["relative"], values
    else:
        if names.duplicated().any():
            raise AdapterError(
                f"{path}: column '{key}' holds file names, but {int(names.duplicated().sum())} "
                "file names repeat "
                "in different folders; give paths relative to --root instead"
            )
        join_files, join_table = names, by_name
    picked = {}
    for target, spellings in ALIASES.items():
        column = next((by_snake[s] for s in spellings if s in by_snake), None)
        if column is not None:
            picked[target] = column
    table = raw[list(picked.values())].copy()
    table.columns = list(picked)
    table["_key"] = join_table.to_numpy()
    table = table.drop_duplicates("_key").set_index("_key")
    joined = table.reindex(join_files.to_numpy())
    joined.index = files.index
    matched = int(joined.notna().any(axis=1).sum())
    notes = [
        f"{path.name}: matched {matched} of {len(files)} images on '{key}'; columns used: "
        + ", ".join(f"{t}<-{c}" for t, c in picked.items())
    ]
    return joined, notes


def build(root: Path, opts: PrepareOptions) -> Prepared:
    files = _scan(root)
    classes = sorted(files["class"].unique())
    columns = {c: class_column(c) for c in classes}
    if len(set(columns.values())) != len(columns):
        raise AdapterError(
            f"{root}: class folders {classes} give clashing column names {list(columns.values())}"
        )
    clash = RESERVED & set(columns.values())
    if clash:
        raise AdapterError(
            f"{root}: class folder name(s) {sorted(clash)} clash with manifest columns; rename them"
        )
    out = pd.DataFrame({"path": files["path"]})
    labels = []
    for cls, col in columns.items():
        out[col] = (files["class"] == cls).astype(float)
        labels.append(col)
    notes = [f"{len(files)} images in {len(classes)} class folders: {', '.join(columns.values())}"]
    negatives = [c for c in columns.values() if NEGATIVE.match(c)]
    positive = snake(opts.positive) if opts.positive else None
    if positive is not None and positive not in labels:
        raise AdapterError(f"--positive {opts.positive}: no such class (classes: {', '.join(labels)})")
    if positive is None and len(labels) == 2 and len(negatives) == 1:
        positive = next(c for c in labels if c != negatives[0])
    if positive is not None:
        out["finding"] = out[positive]
        labels.append("finding")
        notes.append(f"finding = {positive}")
    split_level = files["split"].notna().any()
    if split_level:
        out["split"] = files["split"]
    for column in ("patient_id", "study_id", "view", "site", "manufacturer"):
        out[column] = pd.Series(pd.NA, index=out.index, dtype="string")
    out["sex"], out["age"] = "unknown", np.nan
    dicom = files["path"].map(lambda p: Path(p).suffix.lower() in DICOM_SUFFIXES)
    if opts.read_headers and dicom.any():
        sel = files.index[dicom]
        headers = read_dicom_headers(
            [Path(p) for p in files.loc[sel, "path"]], opts.site_key(), opts.progress
        )
        headers.index = sel
        out.loc[sel, "patient_id"] = headers["patient_pseudonym"].astype("string")
        out.loc[sel, "study_id"] = headers["study_uid"].astype("string")
        out.loc[sel, "sex"] = headers["sex"]
        out.loc[sel, "age"] = headers["age"].astype(float)
        out.loc[sel, "view"] = headers["view"].astype("string")
        out.loc[sel, "site"] = headers["institution"].astype("string")
        out.loc[sel, "manufacturer"] = headers["manufacturer"].astype("string")
        notes.append(f"read DICOM tags of {len(sel)} files (PatientID stored only as a keyed pseudonym)")
    if opts.demographics is not None:
        demo, demo_notes = _demographics(files, Path(opts.demographics))
        notes += demo_notes
        for column in demo.columns:
            given = demo[column].notna()
            if column == "sex":
                out.loc[given, column] = clean_sex(demo.loc[given, column])
            elif column == "age":
                out.loc[given, column] = clean_age(demo.loc[given, column])
            else:
                out.loc[given, column] = demo.loc[given, column].astype("string").str.strip()
    no_pid = out["patient_id"].isna()
    if no_pid.any() and opts.patient_regex:
        pattern = re.compile(opts.patient_regex)
        found = files.loc[no_pid, "path"].map(lambda p: _match(pattern, Path(p).name))
        out.loc[no_pid, "patient_id"] = found.astype("string")
        no_pid = out["patient_id"].isna()
        if no_pid.any():
            raise AdapterError(
                f"--patient-regex {opts.patient_regex!r} matched no patient in {int(no_pid.sum())} "
                "file names, "
                f"e.g. {Path(files.loc[no_pid, 'path'].iloc[0]).name}"
            )
    if no_pid.any():
        stems = files.loc[no_pid, "relative"].map(lambda r: r.rsplit(".", 1)[0])
        out.loc[no_pid, "patient_id"] = stems.astype("string")
        message = (
            f"{int(no_pid.sum())} images have no patient ID (no DICOM PatientID, demographics column or "
            "--patient-regex): each counts as its own patient, so a patient's repeat scans may cross splits"
        )
        log.warning("%s", message)
        notes.append(message)
    return Prepared(out, labels, notes, has_official_split=bool(split_level))


def _match(pattern: re.Pattern[str], name: str) -> str | None:
    m = pattern.search(name)
    if m is None:
        return None
    if "patient" in m.groupdict():
        return m.group("patient")
    return m.group(1) if m.groups() else m.group(0)
