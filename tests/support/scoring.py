"""Bundles, scans and a ``score`` run as the scoring tests build them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xraytriage.commands import score as score_cmd
from xraytriage.config import ModelConfig, PreprocessConfig
from xraytriage.models import build_model, save_bundle


def make_bundle(path: Path, labels: list[str] | None = None, threshold: float = 0.5, seed: int = 0) -> Path:
    labels = labels or ["finding"]
    torch.manual_seed(seed)
    task = "binary" if len(labels) == 1 else "multilabel"
    cfg = ModelConfig(arch="resnet18", weights=None, task=task)
    model = build_model(cfg, num_outputs=1 if task == "binary" else len(labels))
    thresholds = dict.fromkeys(labels, threshold)
    save_bundle(path, model, cfg, PreprocessConfig(image_size=32), labels, thresholds, task=task)
    return path


def write_pngs(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (36, 44), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def write_dicom(src: str, dest: Path, study_uid: str, sop_uid: str) -> Path:
    import pydicom

    ds = pydicom.dcmread(src)
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = sop_uid
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def run_score(inp: Path, bundle: Path, out: Path, *extra: str) -> int:
    return score_cmd.main([str(inp), "--model", str(bundle), "--out", str(out), "--no-progress", *extra])
