"""The demo end to end (reduced size), the synthetic DICOMs it is built on, and the review notebook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.io import load_image

ROOT = Path(__file__).resolve().parents[1]


def test_synthetic_dicoms_are_standard_and_deterministic(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_patients=12, size=64, seed=7)
    first = pd.read_csv(generate_dataset(tmp_path / "a", spec, progress=False))
    second = pd.read_csv(generate_dataset(tmp_path / "b", spec, progress=False))
    assert first.equals(second)
    syntaxes, photometrics, bits = set(), set(), set()
    for rel in first["path"]:
        a, b = pydicom.dcmread(tmp_path / "a" / rel), pydicom.dcmread(tmp_path / "b" / rel)
        assert a.PixelData == b.PixelData
        syntaxes.add(str(a.file_meta.TransferSyntaxUID))
        photometrics.add(a.PhotometricInterpretation)
        bits.add(int(a.BitsStored))
        assert a.Modality in {"DX", "CR"} and a.PatientAge.endswith("Y") and a.ViewPosition in {"PA", "AP"}
        assert (
            a.InstitutionName and a.PatientSex in {"F", "M"} and "WindowCenter" in a and "RescaleSlope" in a
        )
    assert syntaxes == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"}
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"} and bits <= {12, 14, 16}
    assert set(first["split"]) <= {"train", "val", "test"}
    assert first.groupby("patient_id")["split"].nunique().max() == 1  # patient-level split


def test_nodule_is_bright_whatever_the_photometric_interpretation(tmp_path: Path) -> None:
    """MONOCHROME1 files must decode like MONOCHROME2 ones: the lungs dark, the nodule bright."""
    frame = pd.read_csv(
        generate_dataset(tmp_path, SyntheticSpec(n_patients=40, size=64, seed=1), progress=False)
    )
    means = {}
    for photometric, group in frame.groupby("photometric"):
        images = [load_image(tmp_path / p)[0] for p in group["path"]]
        means[photometric] = float(np.mean([im.mean() for im in images]))
    assert abs(means["MONOCHROME1"] - means["MONOCHROME2"]) < 0.03


@pytest.mark.slow
def test_demo_runs_end_to_end_and_notebook_reads_its_outputs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xraytriage",
            "demo",
            "--out",
            str(out),
            "--patients",
            "30",
            "train.epochs=1",
            "preprocess.image_size=32",
            "model.arch=resnet18",
            "data.num_workers=0",
            "evaluation.bootstrap_iterations=30",
            "evaluation.min_group_size=2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in (
        "run/model.pt",
        "run/config.yaml",
        "run/metrics.json",
        "eval/metrics.json",
        "eval/subgroups.csv",
        "eval/predictions.csv",
        "eval/report.html",
        "scores.csv",
    ):
        assert (out / rel).is_file(), rel
    assert any((out / "run" / "tensorboard").iterdir())
    manifest = pd.read_csv(out / "data" / "manifest.csv")
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == int((manifest["split"] == "test").sum())
    errors = pd.read_csv(out / "score_errors.csv")
    assert sorted(Path(p).name for p in errors["path"]) == [
        "empty.dcm",
        "notes.txt",
        "truncated_transfer.dcm",
    ]
    assert "tensorboard --logdir" in proc.stdout and "miss_rate" in proc.stdout
    for text in (
        proc.stdout,
        proc.stderr,
        (out / "scores.csv").read_text(),
        (out / "eval/metrics.json").read_text(),
    ):
        assert "Demo^Patient" not in text and "19500101" not in text

    notebook = json.loads((ROOT / "notebooks" / "review.ipynb").read_text())
    namespace: dict = {}
    import os

    os.environ["XRAYTRIAGE_EVAL_DIR"] = str(out / "eval")
    try:
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), "review.ipynb", "exec"), namespace)
    finally:
        del os.environ["XRAYTRIAGE_EVAL_DIR"]
    assert not namespace["misses"].empty or namespace["predictions"]["finding"].sum() == 0
