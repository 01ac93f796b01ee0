"""Helpers shared by the dataset adapters: label names, uncertainty policy, file lookup, DICOM headers."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from xraytriage.data.pseudonyms import SiteKey, load_site_key
from xraytriage.io.metadata import normalise_sex, parse_age

log = logging.getLogger("xraytriage.data.adapters")

UncertainPolicy = Literal["ignore", "zeros", "ones", "keep"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".dic"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ""}
HEADER_INFLATE_LIMIT = 256 << 20  # a deflated DICOM whose header needs more than this is a zip bomb


class AdapterError(ValueError):
    """The dataset folder is not laid out as its publisher ships it; the message says what was expected."""


@dataclass
class PrepareOptions:
    """Options every adapter receives; each uses the ones that apply to its dataset."""

    uncertain: UncertainPolicy = "ignore"
    labeler: Literal["chexpert", "negbio"] = "chexpert"
    patients: Path | None = None
    vote: Literal["any", "majority"] = "any"
    demographics: Path | None = None
    patient_regex: str | None = None
    positive: str | None = None
    read_headers: bool = True
    key_file: Path | None = None  # the site key for PatientID pseudonyms (data.pseudonyms); made on first use
    progress: bool = True

    def site_key(self) -> SiteKey:
        """The site key, loaded (or created, with a message) only when an adapter needs pseudonyms."""
        return load_site_key(self.key_file)


@dataclass
class Prepared:
    """An adapter's result: absolute ``path`` per row, the label columns it wrote, and notes for the user."""

    table: pd.DataFrame
    labels: list[str]
    notes: list[str] = field(default_factory=list)
    has_official_split: bool = False


def snake(name: str) -> str:
    """Publisher label name -> config-friendly column: 'Pleural_Thickening' -> 'pleural_thickening',
    'Nodule/Mass' -> 'nodule_mass', 'COVID-19' -> 'covid_19'."""
    text = re.sub(r"[^0-9a-zA-Z]+", "_", str(name).strip()).strip("_").lower()
    return re.sub(r"_+", "_", text)


def apply_uncertain(values: pd.DataFrame | pd.Series, policy: UncertainPolicy) -> pd.DataFrame | pd.Series:
    """-1 (uncertain) -> blank (ignore: left out of the loss), 0, 1, or kept as -1."""
    if policy == "keep":
        return values
    replacement = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[policy]
    return values.mask(values == -1, replacement)


def any_finding(table: pd.DataFrame, pathologies: Sequence[str], no_finding: str | None = None) -> pd.Series:
    """1 if any pathology is positive, 0 if the image is explicitly normal or all are negative, else blank."""
    sub = table[list(pathologies)].apply(pd.to_numeric, errors="coerce")
    pos = (sub == 1).any(axis=1)
    all_neg = (sub == 0).all(axis=1)
    normal = (table[no_finding] == 1) if no_finding else pd.Series(False, index=table.index)
    out = pd.Series(np.nan, index=table.index, dtype=float)
    out[all_neg | normal] = 0.0
    out[pos] = 1.0
    return out


def find_file(root: Path, names: Iterable[str], depth: int = 2) -> Path | None:
    """First of ``names`` found in ``root`` or up to ``depth`` folder levels below it."""
    names = list(names)
    levels = [root]
    for _ in range(depth + 1):
        for folder in levels:
            for name in names:
                candidate = folder / name
                if candidate.is_file():
                    return candidate
        levels = [d for f in levels for d in sorted(f.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    return None


def require_file(root: Path, names: Sequence[str], dataset: str) -> Path:
    found = find_file(root, names)
    if found is None:
        raise AdapterError(
            f"{root}: no {' / '.join(names)} found (in the folder or two levels below); "
            f"--root must be the {dataset} folder as downloaded"
        )
    return found


def index_files(root: Path, suffixes: set[str] | None = None) -> dict[str, Path]:
    """{file name: path} for every file under ``root`` (first one wins), optionally by suffix."""
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if suffixes is not None and Path(name).suffix.lower() not in suffixes:
                continue
            found.setdefault(name, Path(dirpath) / name)
    return found


def read_table(path: Path, **kwargs: object) -> pd.DataFrame:
    """CSV (plain, .gz or .zip) with stripped column names (SIIM ships ' EncodedPixels')."""
    table = pd.read_csv(path, **kwargs)  # type: ignore[arg-type]
    table.columns = [str(c).strip() for c in table.columns]
    return table


def require_columns(table: pd.DataFrame, columns: Iterable[str], source: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise AdapterError(
            f"{source}: expected column(s) {', '.join(missing)} "
            f"(found: {', '.join(map(str, table.columns))}); "
            "is this the file as its publisher ships it?"
        )


def clean_sex(values: Iterable[object]) -> list[str]:
    return [
        normalise_sex(v) if v is not None and not (isinstance(v, float) and np.isnan(v)) else "unknown"
        for v in values
    ]


def clean_age(values: Iterable[object]) -> list[float]:
    out = []
    for v in values:
        age = parse_age(None if v is None or (isinstance(v, float) and np.isnan(v)) else v)
        out.append(np.nan if age is None else age)
    return out


def _progress(items: list[Path], enabled: bool, desc: str) -> Iterable[Path]:
    from xraytriage.utils.progress import show_progress

    if not show_progress(enabled) or len(items) < 200:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file")


def read_dicom_headers(
    paths: Sequence[Path | None], site_key: SiteKey | None = None, progress: bool = True
) -> pd.DataFrame:
    """Header-only read (no pixels) of subgroup attributes, via :func:`xraytriage.io.dicom.read_meta`.

    Columns: sex, age, view, manufacturer, institution, study_uid, patient_pseudonym (HMAC of PatientID
    with ``site_key``; blank without one), dicom_patient_id (the raw PatientID, for public datasets that
    publish it anyway). Unreadable or absent files give blanks.
    """
    import warnings

    import pydicom

    from xraytriage.io.dicom import read_meta, refuse_deflate_bomb

    rows = []
    todo = [p for p in paths if p is not None]
    by_path: dict[Path, dict[str, object]] = {}
    for p in _progress(todo, progress, "reading DICOM headers"):
        try:
            refuse_deflate_bomb(p, HEADER_INFLATE_LIMIT)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            meta = read_meta(ds, p, site_key)
            raw_id = ds.get("PatientID")
        except Exception as exc:  # a damaged header costs that file its demographics, not the run
            log.debug("cannot read DICOM header of %s: %s", p, exc.__class__.__name__)
            continue
        by_path[p] = {
            "sex": meta.sex,
            "age": np.nan if meta.age_years is None else meta.age_years,
            "view": meta.view,
            "manufacturer": meta.manufacturer,
            "institution": meta.institution,
            "study_uid": meta.study_uid,
            "patient_pseudonym": meta.patient_pseudonym,
            "dicom_patient_id": str(raw_id).strip() if raw_id not in (None, "") else None,
        }
    empty = dict.fromkeys(
        (
            "sex",
            "age",
            "view",
            "manufacturer",
            "institution",
            "study_uid",
            "patient_pseudonym",
            "dicom_patient_id",
        )
    )
    empty["sex"], empty["age"] = "unknown", np.nan
    for p in paths:
        rows.append(by_path.get(p, empty) if p is not None else empty)
    return pd.DataFrame(rows)


def existing(paths: Iterable[Path]) -> list[Path | None]:
    return [p if p.is_file() else None for p in paths]
