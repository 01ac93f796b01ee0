"""NIH ChestX-ray14: ``Data_Entry_2017*.csv`` with multi-label ``Finding Labels`` ('A|B'), images in
``images/`` or the Kaggle layout ``images_001/images/`` ... ``images_012/images/``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xraytriage.data.adapters._common import (
    AdapterError,
    Prepared,
    PrepareOptions,
    clean_age,
    clean_sex,
    index_files,
    read_table,
    require_columns,
    snake,
)

FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)


def find_table(root: Path) -> Path:
    candidates = sorted(root.glob("Data_Entry_2017*.csv*")) + sorted(root.glob("*/Data_Entry_2017*.csv*"))
    if not candidates:
        raise AdapterError(f"{root}: no Data_Entry_2017*.csv found; --root must be the ChestX-ray14 folder")
    # Prefer the 2020 revision (corrected ages) when both are present.
    return sorted(candidates, key=lambda p: ("v2020" not in p.name, p.name))[0]


def finding_labels(series: pd.Series) -> tuple[pd.DataFrame, set[str]]:
    """'Cardiomegaly|Effusion' -> one 0/1 column per finding (snake_case), plus no_finding/finding."""
    sets = series.fillna("").astype(str).map(lambda s: {t.strip() for t in s.split("|") if t.strip()})
    known = set(FINDINGS) | {"No Finding"}
    unknown = set().union(*sets) - known if len(sets) else set()
    table = pd.DataFrame({snake(f): sets.map(lambda s, f=f: float(f in s)) for f in FINDINGS})
    table["no_finding"] = sets.map(lambda s: float("No Finding" in s))
    table["finding"] = 1.0 - table["no_finding"]
    return table, unknown


def _image_index(root: Path) -> dict[str, Path]:
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower().startswith("images")]
    index: dict[str, Path] = {}
    for folder in folders:
        for name, path in index_files(folder, {".png"}).items():
            index.setdefault(name, path)
    return index


def _official_split(root: Path, names: pd.Series) -> pd.Series | None:
    lists = {"train": root / "train_val_list.txt", "test": root / "test_list.txt"}
    if not all(p.is_file() for p in lists.values()):
        return None
    split = pd.Series(pd.NA, index=names.index, dtype="string")
    for name, p in lists.items():
        members = {line.strip() for line in p.read_text().splitlines() if line.strip()}
        split[names.isin(members)] = name
    return split


def build(root: Path, opts: PrepareOptions) -> Prepared:
    table_path = find_table(root)
    raw = read_table(table_path, dtype={"Patient ID": str, "Patient Age": str})
    require_columns(raw, COLUMNS, table_path)
    labels, unknown = finding_labels(raw["Finding Labels"])
    notes = [f"read {len(raw)} rows from {table_path.name}"]
    if unknown:
        notes.append(f"ignored unknown finding names: {', '.join(sorted(unknown))}")
    index = _image_index(root)
    names = raw["Image Index"].astype(str).str.strip()
    default_dir = root / "images"
    out = pd.DataFrame(
        {
            "path": [str(index.get(n, default_dir / n)) for n in names],
            "patient_id": raw["Patient ID"].astype(str).str.strip().str.lstrip("0").replace("", "0"),
            "study_id": raw["Patient ID"].astype(str).str.strip() + "_" + raw["Follow-up #"].astype(str),
        }
    )
    out = pd.concat([out, labels], axis=1)
    out["sex"] = clean_sex(raw["Patient Gender"])
    out["age"] = clean_age(raw["Patient Age"])
    out["view"] = raw["View Position"].astype("string").str.strip().str.upper()
    out["site"] = "NIH Clinical Center"
    out["manufacturer"] = pd.NA
    official = _official_split(root, names)
    if official is not None:
        out["split"] = official
        notes.append("official split from train_val_list.txt / test_list.txt")
    bad_age = out["age"].isna() & raw["Patient Age"].notna()
    if bad_age.any():
        notes.append(f"{int(bad_age.sum())} implausible ages (>= 150) left blank")
    return Prepared(out, [*map(snake, FINDINGS), "no_finding", "finding"], notes, official is not None)
