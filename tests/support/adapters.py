"""Placeholder images and ``prepare`` runs on the publishers' file layouts."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from xraytriage.commands import prepare
from xraytriage.data.manifest import patient_leakage, read_manifest

PUBLIC = "public_metadata"


# ----------------------------------------------------------------------------------------- helpers
def tiny_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(path)


def tiny_dicom(path: Path, **tags: object) -> None:
    """An 8x8 MONOCHROME2 DICOM with the given header attributes (PatientSex='F', PatientAge='058Y', ...).

    RSNA's real headers carry ages like '58' (not DICOM's '058Y'); pydicom warns when writing them.
    """
    import warnings

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = str(tags.get("SOPInstanceUID", generate_uid()))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "CR"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for key, value in tags.items():
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)


def run_prepare(source: str, root: Path, out: Path, **kwargs: object) -> int:
    defaults: dict[str, object] = dict(
        source=source,
        root=root,
        out=out,
        uncertain="ignore",
        labeler="chexpert",
        patients=None,
        vote="any",
        demographics=None,
        patient_regex=None,
        positive=None,
        no_headers=False,
        keep_split=False,
        views=None,
        drop_missing=False,
        absolute_paths=False,
        key_file=None,
        val=0.1,
        test=0.2,
        seed=0,
        folds=0,
        val_fold=0,
        no_stratify=False,
    )
    defaults.update(kwargs)
    return prepare.run(argparse.Namespace(**defaults))


def load(out: Path, labels: list[str]) -> pd.DataFrame:
    df = read_manifest(out, labels=labels, check_files=True)  # what training does
    assert patient_leakage(df) == {}
    assert set(df["split"]) <= {"train", "val", "test"}
    assert set(df["sex"]) <= {"F", "M", "unknown"}
    return df


def nih_root(tmp_path: Path, rows: pd.DataFrame) -> Path:
    root = tmp_path / "ChestX-ray14"
    root.mkdir()
    rows.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    for i, name in enumerate(rows["Image Index"]):  # Kaggle layout: images_001/images/, images_002/images/
        tiny_image(root / f"images_{1 + i // 250:03d}" / "images" / name)
    return root


def chexpert_root(tmp_path: Path, rows: pd.DataFrame) -> Path:
    parent = tmp_path / "download"
    root = parent / "CheXpert-v1.0-small"
    root.mkdir(parents=True)
    rows.to_csv(root / "train.csv", index=False)
    valid = rows.tail(20).copy()
    valid["Path"] = valid["Path"].str.replace("/train/", "/valid/").str.replace("patient", "patient9")
    valid.to_csv(root / "valid.csv", index=False)
    for p in [*rows["Path"], *valid["Path"]]:
        tiny_image(parent / p)  # Path starts with 'CheXpert-v1.0-small/'
    return root
